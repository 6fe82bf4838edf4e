// Package envelope is Natter's public wire contract: the v1 envelope
// {type, meta, payload}, its strict decoder, the ERROR and RPC_ERROR frames
// with their gRPC-style codes, the WebSocket close codes, the NATS headers
// the edge sets, and the only functions that turn types and ids into NATS
// subject tokens.
//
// Everything here is safe for concurrent use: the package has no mutable
// state, and a Namespace is an immutable value.
package envelope
