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
// and user. register calls it once, before it subscribes the connection's
// subjects and before the read loop starts, so it is the first frame.
func (c *conn) sendWelcome() {
	b, err := json.Marshal(welcome{ConnectionID: c.id, User: c.user})
	if err != nil {
		return // two strings: cannot fail
	}
	c.sendEnvelope(&envelope.Envelope{Type: envelope.TypeConnected, Payload: b})
}
