package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/natter/natter/internal/schema"
	"github.com/natter/natter/pkg/client"
	"github.com/natter/natter/pkg/rpc"
)

func ExampleLoadSchemas() {
	edgeSchemas, err := schema.Load(schema.Config{}) // the edge's: the shipped ones, as with no --schemas
	if err != nil {
		panic(err)
	}
	url, stop := startExampleMeshWith(edgeSchemas)
	defer stop()

	// The same .proto files as the edge: the shipped ones and the
	// directories given to its --schemas (none here).
	types, err := client.LoadSchemas()
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	c, err := client.Dial(ctx, url, client.Options{User: "alice", Wire: client.WireProtobuf, Schemas: types})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	if err := c.Join(ctx, "general"); err != nil {
		panic(err)
	}

	// chat.send and its reply chat.sent travel as protobuf; the
	// application sees the same JSON payloads as on the JSON wire.
	var sent struct {
		TS int64 `json:"ts"`
	}
	err = c.Call(ctx, "chat.send", map[string]string{"room": "general", "text": "hello"}, &sent)
	fmt.Println(err, sent.TS > 0)

	err = c.Call(ctx, "chat.send", map[string]string{"room": "general", "text": ""}, nil)
	var re *rpc.Error
	if !errors.As(err, &re) {
		panic(err)
	}
	var details struct {
		Violations []struct{ Field, Rule string }
	}
	_ = json.Unmarshal(re.Details, &details) // the edge's validation names the JSON path
	fmt.Println(re.Code, details.Violations)
	// Output:
	// <nil> true
	// INVALID_ARGUMENT [{text string.min_len}]
}
