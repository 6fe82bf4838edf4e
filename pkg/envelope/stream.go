package envelope

import (
	"strings"
	"unicode/utf8"
)

// Response streams (docs/protocol.md, "Response streams"): a producer
// appends text chunks to <prefix>.stream.<id> in the <prefix>_streams
// stream and ends it with a rollup holding the whole text; clients read it
// with $stream.join from a byte offset.

// Stream is <prefix>.stream.<id>: a response stream's messages in the
// streams stream. Publish here with JetStream.
func (n Namespace) Stream(id string) (Subject, error) { return n.idSubject(".stream.", id) }

// StreamsStream is the JetStream stream of response streams:
// <prefix>_streams, dots replaced by underscores.
func (n Namespace) StreamsStream() string {
	return strings.ReplaceAll(n.prefix, ".", "_") + "_streams"
}

// StreamLive is <prefix>.streamlive.<id>: the streams stream republishes
// every stored message of stream id here, with Nats-Sequence and
// Nats-Last-Sequence; edges with readers listen.
func (n Namespace) StreamLive(id string) (Subject, error) { return n.idSubject(".streamlive.", id) }

// StreamCtl is <prefix>.ctl.stream.<id>: requests to a stream's producer,
// {"op":"ping"} and {"op":"cancel"}, answered {"ok":true}.
func (n Namespace) StreamCtl(id string) (Subject, error) { return n.idSubject(".ctl.stream.", id) }

// The client's stream frames.
const (
	TypeStreamJoin      = "$stream.join"
	TypeStreamJoined    = "$stream.joined"
	TypeStreamLeave     = "$stream.leave"
	TypeStreamLeft      = "$stream.left"
	TypeStreamCancel    = "$stream.cancel"
	TypeStreamCancelled = "$stream.cancelled"
	TypeStreamChunk     = "$stream.chunk"
	TypeStreamEnd       = "$stream.end"
)

// The headers of a stream's messages.
const (
	// HeaderStream is the event: StreamOpen, StreamChunk, StreamDone or
	// StreamError.
	HeaderStream = "Natter-Stream"
	// Who may read the stream, on its open and end: exactly one of these.
	HeaderStreamUser = "Natter-Stream-User"
	HeaderStreamRoom = "Natter-Stream-Room"
	HeaderStreamConn = "Natter-Stream-Conn"
	// HeaderStreamOffset on a chunk is the byte offset of its start in
	// the stream's text (optional): an edge that finds it on every chunk
	// starts a join from an offset at the chunk that holds it, instead of
	// reading the text before it.
	HeaderStreamOffset = "Natter-Stream-Offset"
	// An error end's code and message.
	HeaderStreamCode    = "Natter-Stream-Code"
	HeaderStreamMessage = "Natter-Stream-Message"
)

// The values of HeaderStream.
const (
	StreamOpen  = "open"
	StreamChunk = "chunk"
	StreamDone  = "done"
	StreamError = "error"
)

// The ops of a StreamControl request.
const (
	StreamPing   = "ping"
	StreamCancel = "cancel"
)

// StreamControl is the body of a request on <prefix>.ctl.stream.<id>.
type StreamControl struct {
	Op string `json:"op"`
}

// StreamTo names who may read a stream: exactly one field set.
type StreamTo struct {
	User string `json:"user,omitempty"`
	Room string `json:"room,omitempty"`
	Conn string `json:"conn,omitempty"`
}

// StreamQuery is the payload of $stream.join (with Offset), $stream.leave
// and $stream.cancel.
type StreamQuery struct {
	Stream string `json:"stream"`
	Offset int64  `json:"offset,omitempty"`
}

// StreamJoined is the payload of $stream.joined.
type StreamJoined struct {
	Stream string   `json:"stream"`
	Offset int64    `json:"offset"`
	To     StreamTo `json:"to"`
}

// StreamEnd is the payload of $stream.end.
type StreamEnd struct {
	Status string        `json:"status"`
	Error  *ErrorPayload `json:"error,omitempty"`
}

// MaxStreamJoins bounds the streams one connection reads at once.
const MaxStreamJoins = 16

// TextCut is how many bytes of text go in one piece of at most max bytes:
// all of it when it fits, else max cut back to the start of a UTF-8
// character (max itself when there is none in reach).
func TextCut(text []byte, max int) int {
	if len(text) <= max {
		return len(text)
	}
	for n := max; n > max-utf8.UTFMax && n > 0; n-- {
		if utf8.RuneStart(text[n]) {
			return n
		}
	}
	return max
}
