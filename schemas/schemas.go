// Package schemas holds the .proto schemas Natter ships: the message options
// that map messages to envelope types (natter/v1/options.proto), the
// envelope itself as documentation (natter/v1/envelope.proto), and the
// payloads of the built-in handlers (natter/chat/v1/chat.proto) and of the
// demo's assistant (natter/assistant/v1/assistant.proto).
//
// FS embeds them, so every binary carries its schemas; internal/schema
// compiles them at start-up. Paths in FS are import paths, such as
// "natter/v1/options.proto".
package schemas

import "embed"

// FS holds every shipped .proto file, keyed by import path.
//
//go:embed natter
var FS embed.FS
