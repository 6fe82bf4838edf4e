package worker_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/natsd"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/worker"
)

// A worker answers "greet" requests; a Go service calls it the way a
// browser would, through the same NATS subject.
func Example() {
	dir, _ := os.MkdirTemp("", "natter-example-")
	defer os.RemoveAll(dir)
	srv, err := natsd.Start(natsd.Config{Addr: "127.0.0.1:0", StoreDir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Shutdown()
	nc, _ := nats.Connect(srv.ClientURL())
	defer nc.Close()

	w, _ := worker.New(nc, worker.Config{})
	_ = w.Handle("greet", func(ctx context.Context, m *worker.Message) error {
		var in struct{ Name string }
		if err := m.Bind(&in); err != nil {
			return err // becomes RPC_ERROR INVALID_ARGUMENT
		}
		return m.Reply("greeting", map[string]string{"text": "hello, " + in.Name})
	})
	_ = w.Flush(context.Background())

	var out struct{ Text string }
	err = rpc.Call(context.Background(), nc, envelope.DefaultNamespace, "greet", map[string]string{"name": "ada"}, &out)
	fmt.Println(out.Text, err)

	err = rpc.Call(context.Background(), nc, envelope.DefaultNamespace, "greet", nil, nil)
	fmt.Println(err)
	// Output:
	// hello, ada <nil>
	// rpc: INVALID_ARGUMENT: payload is required
}
