package edge

import (
	"encoding/json"

	"github.com/natter/natter/pkg/envelope"
)

// welcome is the payload of $connected.
type welcome struct {
	// ConnectionID is the id services address the connection by
	// (natter.out.conn.<id>, natter.ctl.conn.<id>, rpc.Ask), and the
	// Natter-Conn header of what the connection sends.
	ConnectionID string `json:"connectionId"`
	// User is the connection's user id; absent for anonymous connections.
	User string `json:"user,omitempty"`
}

// sendWelcome queues $connected, which tells the client its connection id
// and user. ServeHTTP calls it once, right after the connection is
// registered and before its read loop starts, so it is queued before any
// reply to the client; a publish to the connection's user or to every
// connection that races the registration can still come first.
func (c *conn) sendWelcome() {
	b, err := json.Marshal(welcome{ConnectionID: c.id, User: c.user})
	if err != nil {
		return // two strings: cannot fail
	}
	c.sendEnvelope(&envelope.Envelope{Type: envelope.TypeConnected, Payload: b})
}
