package envelope

// Control is the JSON body of a message on <prefix>.ctl.conn.<id>. Any
// service may send one; the edge that holds the connection acts on it and,
// when the message has a reply subject, answers with a ControlReply.
//
//	{"op":"join","room":"general"}
//	{"op":"join","room":"general","asClient":true}
//	{"op":"leave","room":"general"}
//	{"op":"member","room":"general"}
//	{"op":"close","code":4003,"reason":"bye"}
type Control struct {
	Op   string `json:"op"`
	Room string `json:"room,omitempty"`
	// AsClient makes a join subject to the client's own room authorization
	// (token grants, public rooms, the join authorizer), for handlers that
	// join a client to a room it asked for: PERMISSION_DENIED otherwise.
	AsClient bool      `json:"asClient,omitempty"`
	Code     CloseCode `json:"code,omitempty"`
	Reason   string    `json:"reason,omitempty"`
}

// Control operations.
const (
	OpJoin  = "join"
	OpLeave = "leave"
	OpClose = "close"
	// OpMember succeeds when the connection is in Room, and fails with
	// PERMISSION_DENIED when it is not: handlers that post to a room on a
	// client's behalf check this first.
	OpMember = "member"
)

// ControlReply answers a Control request.
type ControlReply struct {
	OK    bool          `json:"ok"`
	Error *ErrorPayload `json:"error,omitempty"`
}

// RoomPayload is the payload of $join, $leave, $joined and $left.
// Presence, on $join, asks for $presence.diff frames of the room.
type RoomPayload struct {
	Room     string `json:"room"`
	Presence bool   `json:"presence,omitempty"`
}
