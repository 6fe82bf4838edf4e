package edge

import (
	"encoding/json"
	"errors"

	"github.com/natter/natter/internal/schema"
	"github.com/natter/natter/pkg/envelope"
)

// checkIn validates a client message's payload against the client-direction
// schema of its type; nil means it may go on. A violation becomes
// INVALID_ARGUMENT with details {"violations":[{field, rule, message}]};
// a type without a schema in strict mode becomes NOT_FOUND.
func (e *Edge) checkIn(env *envelope.Envelope) *envelope.ErrorPayload {
	if e.cfg.Schemas == nil {
		return nil
	}
	err := e.cfg.Schemas.Validate(schema.Client, env.Type, env.Payload)
	if err == nil {
		return nil
	}
	e.stats.invalidIn.Add(1)
	var ve *schema.ValidationError
	switch {
	case errors.As(err, &ve):
		details, _ := json.Marshal(struct {
			Violations []schema.Violation `json:"violations"`
		}{ve.Violations})
		return &envelope.ErrorPayload{Code: envelope.CodeInvalidArgument, Message: ve.Error(), Details: details}
	case errors.Is(err, schema.ErrUnknownType):
		return &envelope.ErrorPayload{Code: envelope.CodeNotFound, Message: "no schema for type " + env.Type + " (strict mode)"}
	}
	return &envelope.ErrorPayload{Code: envelope.CodeInternal, Message: "validation failed"}
}

// validOut reports whether an envelope headed for clients matches the
// server-direction schema of its type. It runs once per message per edge,
// before any fan-out. Invalid ones are counted and logged (at most one line
// a second) and never reach a socket.
func (e *Edge) validOut(env *envelope.Envelope) bool {
	if e.cfg.Schemas == nil || envelope.IsSystemType(env.Type) || env.Type == envelope.TypeError || env.Type == envelope.TypeRPCError {
		return true // the mesh's own frames have no app schema, even in strict mode
	}
	err := e.cfg.Schemas.Validate(schema.Server, env.Type, env.Payload)
	if err == nil {
		return true
	}
	e.stats.dropped.Add(1)
	if e.logLimit.Allow() {
		e.cfg.Logger.Warn("edge: dropped an outbound envelope that breaks its schema", "type", env.Type, "err", err)
	}
	return false
}
