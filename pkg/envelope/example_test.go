package envelope_test

import (
	"errors"
	"fmt"

	"github.com/natter/natter/pkg/envelope"
)

func ExampleDecode() {
	frame := []byte(`{"type":"chat.send","meta":{"correlationId":"c1"},"payload":{"room":"general","text":"hi"}}`)
	e, err := envelope.Decode(frame, envelope.DefaultMaxSize)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(e.Type, e.Meta.CorrelationID, string(e.Payload))

	// A frame the edge must refuse: the type would be a NATS wildcard.
	_, err = envelope.Decode([]byte(`{"type":"chat.>"}`), envelope.DefaultMaxSize)
	fmt.Println(errors.Is(err, envelope.ErrInvalidType), envelope.CodeOf(err))
	// Output:
	// chat.send c1 {"room":"general","text":"hi"}
	// true INVALID_ARGUMENT
}

func ExampleNamespace_Room() {
	ns, err := envelope.NewNamespace("natter")
	if err != nil {
		fmt.Println(err)
		return
	}
	subj, err := ns.Room("general")
	fmt.Println(subj, err)

	// An id that would widen the subscription, or add a token, is refused.
	for _, id := range []string{"general.>", "a b", ""} {
		_, err := ns.Room(id)
		fmt.Println(errors.Is(err, envelope.ErrInvalidID))
	}
	// Output:
	// natter.out.room.general <nil>
	// true
	// true
	// true
}

func ExampleErrorFrame() {
	// A malformed frame with no correlationId gets an ERROR ...
	fmt.Println(string(envelope.ErrorFrame("", envelope.CodeInvalidArgument, "unknown field")))
	// ... and a request gets an RPC_ERROR that names it.
	fmt.Println(string(envelope.ErrorFrame("c1", envelope.CodeUnavailable, "no worker for chat.send")))
	// Output:
	// {"type":"ERROR","payload":{"code":"INVALID_ARGUMENT","message":"unknown field"}}
	// {"type":"RPC_ERROR","meta":{"correlationId":"c1"},"payload":{"code":"UNAVAILABLE","message":"no worker for chat.send"}}
}
