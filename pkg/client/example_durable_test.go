package client_test

import (
	"context"
	"fmt"

	"github.com/natter/natter/pkg/client"
	"github.com/natter/natter/pkg/envelope"
)

func ExampleClient_History() {
	url, stop := startExampleMesh() // rooms "orders-*" are durable there
	defer stop()

	ctx := context.Background()
	recoveries := make(chan client.Recovery, 1)
	c, err := client.Dial(ctx, url, client.Options{
		User: "alice",
		// Re-joins after a reconnect replay what was missed; a gap
		// (Recovered false) means the room's state must be fetched again.
		OnRecovery: func(r client.Recovery) { recoveries <- r },
	})
	if err != nil {
		panic(err)
	}
	defer c.Close()

	for _, o := range []string{`"a"`, `"b"`, `"c"`} {
		publishOrder("orders-7", o) // a Go service: worker.Publisher.ToDurableRoom
	}

	// The two newest messages, and the page before them.
	page, err := c.History(ctx, "orders-7", client.HistoryQuery{Limit: 2})
	if err != nil {
		panic(err)
	}
	for _, env := range page.Messages {
		fmt.Println("history:", string(env.Payload))
	}
	first, _ := client.OffsetOf(page.Messages[0])
	older, err := c.History(ctx, "orders-7", client.HistoryQuery{Limit: 2, Before: first.Offset})
	if err != nil {
		panic(err)
	}
	fmt.Println("older:", string(older.Messages[0].Payload), "more:", older.More)

	// Join from a saved position: what came after it is replayed first.
	orders := make(chan *envelope.Envelope, 8)
	c.On("order", func(env *envelope.Envelope) { orders <- env })
	if err := c.Join(ctx, "orders-7", client.WithSince(first)); err != nil {
		panic(err)
	}
	fmt.Println("replayed:", string((<-orders).Payload))
	r := <-recoveries
	fmt.Println("recovered:", r.Room, r.Recovered)
	// Output:
	// history: "b"
	// history: "c"
	// older: "a" more: false
	// replayed: "c"
	// recovered: orders-7 true
}
