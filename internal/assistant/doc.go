// Package assistant is the demo's "assistant" room: a built-in worker that
// answers questions with long response streams (docs/protocol.md,
// "Response streams"), so that the demo shows an answer surviving reloads,
// reconnects and other tabs. There is no model behind it: an answer is a
// few hundred words generated deterministically from the question
// (Answer), written word by word with a pause between words
// (Config.WordDelay).
//
// Types (clients must be members of the room "assistant"; others get
// PERMISSION_DENIED "join room assistant before asking". Services, whose
// messages come without a connection, may ask too):
//
//	assistant.ask      {"question": 1-500 bytes of UTF-8} -> reply {"stream": id}.
//	                   Opens a response stream readable by the room's members,
//	                   publishes "assistant.answer" {"stream","question","user"}
//	                   to the room (every member, the asker's other tabs
//	                   included, learns of it), replies, and then writes the
//	                   answer in the background and ends the stream done, or
//	                   CANCELLED when a reader cancels it ($stream.cancel).
//	                   RESOURCE_EXHAUSTED when Config.MaxAnswers answers are
//	                   being written already.
//	assistant.current  {} -> {"stream": id | null, "question"?, "user"?}: the
//	                   answer opened last (being written, or ended), so that
//	                   a page that reloads finds it and reads it from offset 0.
//
// The current answer is kept in the worker's memory: with several workers
// in one queue group each knows only the answers it opened, and a
// restarted worker knows none (its streams, left unended, are ended
// UNAVAILABLE by the first edge that finds their producer gone). The demo
// runs one worker (the single binary's, or one cmd/worker).
//
// Concurrency: an Assistant's handlers run concurrently; its state is one
// mutex's. Every answer is written by a goroutine of the Assistant's own
// (a routine.Group); Close stops them (the answers being written end
// UNAVAILABLE) and waits for them.
package assistant
