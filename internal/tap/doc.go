// Package tap shows the live traffic of a Natter deployment for operators,
// decoded and filtered: what cmd/natter-tap prints.
//
// A Tap holds core NATS subscriptions only (no JetStream consumer), so it
// adds no state to the servers and costs nothing once stopped. It reads:
//
//	<prefix>.in.<type>              client -> worker; Natter-Conn, -User, -Edge headers
//	<prefix>.out.room.<id>          deliveries to a room's members
//	<prefix>.out.user.<id>          ... to a user's connections
//	<prefix>.out.conn.<edge>.<n>    ... to one connection
//	<prefix>.out.all                ... to everyone
//	<prefix>.durable.live.<room>    durable rooms, republished with Nats-Sequence
//	<prefix>.ctl.conn.<edge>.<n>    join, leave, member and close requests
//	<prefix>.evt.<event>            lifecycle events (Config.Events)
//
// Replies to requests go to the requesting edge's inbox (_INBOX_EDGE.> in
// deploy/nats), which a tap neither needs nor is allowed to read: an
// inbound request is marked "request" with its correlation id, and its
// reply is not shown.
//
// Filters: Rooms, Users and Conns select the traffic of any of them;
// Types and Direction narrow it further. Subscriptions are as narrow as
// the filters allow (Config.Subjects): a plain room id subscribes only
// out.room.<id> and durable.live.<id>, a type glob "chat.*" only
// in.chat.>; a user or connection filter on inbound messages needs their
// headers and is applied by the tap.
//
// Payloads are redacted unless Config.Payloads is set: a line shows the
// payload's size, "payload=<redacted 42 B>". A body that is not an
// envelope is shown as undecodable with its size, never more.
//
// Concurrency: Run owns its goroutine-free loop; received messages wait in
// a bounded channel (Config.Buffer), beyond which NATS drops them as a slow
// consumer and Run reports how many.
package tap
