// Package demo serves the browser demo of Natter: a small chat page (rooms,
// messages, who is online, typing indicators, the connection state, and an
// "assistant" room whose answers are response streams written by
// internal/assistant) built on the TypeScript client, compiled by clients/ to static/natter.js (the
// entry) and the modules it imports in static/natter/.
//
// The edge mounts Handler at "/" in dev mode only (single binary without
// authentication flags): the page picks its user with the insecure ?user=
// parameter. The page is plain HTML, CSS and JavaScript modules, embedded
// in the binary; it has no build step of its own.
//
// Handler is safe for concurrent use; it only reads the embedded files.
package demo
