// Package schema is Natter's schema registry: .proto schemas compiled at
// start-up, with buf.validate rules, that the edge uses to validate message
// payloads per envelope type and direction.
//
// A message becomes the schema of a type through the options declared in
// natter/v1/options.proto:
//
//	message SendMessage {
//	  option (natter.v1.client_type) = "chat.send";
//	  string room = 1 [(buf.validate.field).string.min_len = 1];
//	}
//
// client_type names types a client sends, server_type types sent toward
// clients, and open = true accepts (and drops) JSON keys the message does
// not declare. Load compiles the schemas shipped in package schemas together
// with the user's .proto files, once; Validate then decodes a payload as
// protojson does into a dynamic message and checks its buf.validate rules.
// Types without a schema pass, unless Config.Strict is set.
//
// Concurrency: a Registry is immutable after Load. Validate, Known, Types
// and ServeHTTP are safe for concurrent use and take no locks.
package schema
