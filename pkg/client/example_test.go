package client_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/natter/natter/pkg/client"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
)

func Example() {
	url, stop := startExampleMesh() // an edge, NATS and the built-in echo and chat handlers
	defer stop()

	ctx := context.Background()
	c, err := client.Dial(ctx, url, client.Options{User: "alice"}) // Token: client.StaticToken(jwt) in production
	if err != nil {
		panic(err)
	}
	defer c.Close()

	news := make(chan *envelope.Envelope, 1)
	c.On("news", func(env *envelope.Envelope) { news <- env })
	if err := c.Join(ctx, "general"); err != nil { // re-joined by itself after reconnects
		panic(err)
	}
	publishNews("general", `"natter is up"`) // any service on NATS: natter.out.room.general
	env := <-news
	fmt.Println(env.Meta.Room, string(env.Payload))

	var reply map[string]string
	if err := c.Call(ctx, "echo", map[string]string{"hello": "world"}, &reply); err != nil {
		panic(err)
	}
	fmt.Println("echo:", reply["hello"])

	err = c.Call(ctx, "chat.send", map[string]string{"room": "general", "text": ""}, nil)
	fmt.Println(errors.Is(err, rpc.ErrInvalidArgument), err)
	// Output:
	// general "natter is up"
	// echo: world
	// true rpc: INVALID_ARGUMENT: text must be 1..4096 bytes of UTF-8
}
