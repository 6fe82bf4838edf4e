package envelope

import (
	"encoding/json"
	"errors"
)

// Code is a gRPC-style error code carried in ERROR and RPC_ERROR frames.
type Code string

// The error codes. Their meaning follows gRPC's status codes.
const (
	CodeInvalidArgument    Code = "INVALID_ARGUMENT"
	CodeUnauthenticated    Code = "UNAUTHENTICATED"
	CodePermissionDenied   Code = "PERMISSION_DENIED"
	CodeNotFound           Code = "NOT_FOUND"
	CodeAlreadyExists      Code = "ALREADY_EXISTS"
	CodeResourceExhausted  Code = "RESOURCE_EXHAUSTED"
	CodeFailedPrecondition Code = "FAILED_PRECONDITION"
	CodeAborted            Code = "ABORTED"
	CodeCanceled           Code = "CANCELLED"
	CodeUnavailable        Code = "UNAVAILABLE"
	CodeDeadlineExceeded   Code = "DEADLINE_EXCEEDED"
	CodeUnimplemented      Code = "UNIMPLEMENTED"
	CodeInternal           Code = "INTERNAL"
)

// The error frame types.
const (
	TypeError    = "ERROR"
	TypeRPCError = "RPC_ERROR"
)

// System message types the edge handles itself.
const (
	// TypeConnected is the first frame the edge sends on every connection,
	// before any other: {"connectionId": id, "user"?: id}. Services address
	// the connection as natter.out.conn.<connectionId>.
	TypeConnected    = "$connected"
	TypeJoin         = "$join"
	TypeJoined       = "$joined"
	TypeLeave        = "$leave"
	TypeLeft         = "$left"
	TypeHistory      = "$history"
	TypeHeartbeat    = "__heartbeat"
	TypeHeartbeatAck = "__heartbeat_ack"
	// TypeRPCProgress frames carry a worker's progress on a request, with
	// the request's correlationId, before its one reply.
	TypeRPCProgress = "$ws:rpc-progress"
	// TypeRPCOK is the reply a worker sends for a request its handler
	// finished without a reply of its own.
	TypeRPCOK = "$ws:rpc-ok"
	// TypeAccepted answers a request of a durable type once the work
	// stream has stored it; a worker handles it later (Accepted).
	TypeAccepted = "$ws:accepted"
	// TypeAbort from a client cancels its request meta.correlationId.
	TypeAbort = "$ws:abort"
	// TypePresence queries presence (a room's members, a user's status).
	TypePresence = "$presence"
	// TypePresenceState sets the connection's small presence state.
	TypePresenceState = "$presence.state"
	// TypePresenceDiff carries a room's batched joins, leaves and state
	// changes to members that joined with {"presence": true}.
	TypePresenceDiff = "$presence.diff"
	// TypeAuthRefresh from a client carries a fresh token ({"token": ...})
	// for its live connection; the edge answers TypeAuthRefreshed or ERROR.
	TypeAuthRefresh   = "$auth.refresh"
	TypeAuthRefreshed = "$auth.refreshed"
	// TypeAuthExpiring tells a client its token expires soon
	// ({"expiresAt": unix ms}); without a refresh by then the connection is
	// closed with CloseUnauthorized.
	TypeAuthExpiring = "$auth.expiring"
)

// ErrorPayload is the payload of ERROR and RPC_ERROR frames.
type ErrorPayload struct {
	Code         Code            `json:"code"`
	Message      string          `json:"message"`
	Details      json.RawMessage `json:"details,omitempty"`
	RetryAfterMs int64           `json:"retryAfterMs,omitempty"`
}

// Error returns the error payload as "CODE: message".
func (p *ErrorPayload) Error() string { return string(p.Code) + ": " + p.Message }

// ErrorFrame encodes an error frame. It is an RPC_ERROR carrying
// correlationID when that is set, an ERROR otherwise.
func ErrorFrame(correlationID string, code Code, message string) []byte {
	return EncodeError(correlationID, &ErrorPayload{Code: code, Message: message})
}

// RPCErrorFrame encodes an RPC_ERROR whether or not correlationID is set:
// the answer to a request made over NATS, where the reply subject, not the
// correlation id, ties it to the request.
func RPCErrorFrame(correlationID string, code Code, message string) []byte {
	return EncodeRPCError(correlationID, &ErrorPayload{Code: code, Message: message})
}

// EncodeRPCError encodes p as an RPC_ERROR whether or not correlationID is set.
func EncodeRPCError(correlationID string, p *ErrorPayload) []byte {
	e := Envelope{Type: TypeRPCError, Meta: Meta{CorrelationID: correlationID}}
	e.Payload, _ = json.Marshal(p)
	b, _ := Encode(&e)
	return b
}

// EncodeError encodes p as an ERROR, or an RPC_ERROR when correlationID is set.
func EncodeError(correlationID string, p *ErrorPayload) []byte {
	e := Envelope{Type: TypeError}
	if correlationID != "" {
		e.Type = TypeRPCError
		e.Meta.CorrelationID = correlationID
	}
	e.Payload, _ = json.Marshal(p)
	b, _ := Encode(&e)
	return b
}

// CodeOf maps a decoding or subject error to its wire code.
func CodeOf(err error) Code {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrTooLarge):
		return CodeResourceExhausted
	default:
		return CodeInvalidArgument
	}
}

// CloseCode is a WebSocket close code the edge sends. The project documents
// them; 4000-4099 mean "reconnect", 4100-4199 mean "do not reconnect".
type CloseCode uint16

// Close codes. Standard codes the edge uses: 1007 invalid UTF-8 in a text
// frame, 1009 frame over the size limit, 1002 broken WebSocket protocol.
const (
	CloseNormal       CloseCode = 1000
	CloseProtocol     CloseCode = 1002
	CloseInvalidUTF8  CloseCode = 1007
	CloseTooLarge     CloseCode = 1009
	CloseServerError  CloseCode = 1011 // the edge failed on this connection (a recovered panic): reconnect with backoff
	CloseShutdown     CloseCode = 4000 // the edge is going away: reconnect, to another edge
	CloseSlowConsumer CloseCode = 4001 // the client did not read fast enough: reconnect
	CloseIdle         CloseCode = 4002 // no message within the inactivity timeout: reconnect when needed
	CloseServer       CloseCode = 4003 // closed by the server (natter.ctl close): reconnect
	CloseInternal     CloseCode = 4004 // internal error: reconnect with backoff
	CloseUnauthorized CloseCode = 4100 // authentication failed or expired: do not reconnect as is
	CloseForbidden    CloseCode = 4101 // not allowed: do not reconnect
	CloseKicked       CloseCode = 4102 // closed by the server for good: do not reconnect
)

// Reconnect reports whether a client should reconnect after code.
func (c CloseCode) Reconnect() bool {
	switch {
	case c >= 4000 && c < 4100:
		return true
	case c >= 4100 && c < 4200:
		return false
	case c == 1000 || c == 1002 || c == 1003 || c == 1007 || c == 1008 || c == 1009:
		return false
	}
	return true // 1001, 1006, 1011, 1012, 1013 and anything unknown
}

// NATS headers set by the edge on natter.in messages. Clients cannot set
// NATS headers, so these cannot be forged from a socket.
const (
	HeaderConn = "Natter-Conn"
	HeaderUser = "Natter-User"
	HeaderEdge = "Natter-Edge"
	// HeaderTimeout on a request is the deadline the edge granted, in
	// milliseconds: the client's meta.timeoutMs after clamping. Workers use
	// it for the handler's context.
	HeaderTimeout = "Natter-Timeout-Ms"
	// HeaderProgress marks a message on a request's reply subject as a
	// progress frame, not the reply.
	HeaderProgress = "Natter-Progress"
	// HeaderExclude on a room, user or all publish names connection ids,
	// comma-separated, that must not receive it.
	HeaderExclude = "Natter-Exclude"
)
