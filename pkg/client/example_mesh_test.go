package client_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/chat"
	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/natsd"
	"github.com/natter/natter/internal/schema"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/worker"
)

// exampleNATS is the service connection of the running example.
var exampleNATS *nats.Conn

// startExampleMesh runs what `go run ./cmd/edge` runs, on random loopback
// ports: an embedded NATS server, the built-in handlers and a dev-mode edge.
// It returns the edge's WebSocket URL.
func startExampleMesh() (url string, stop func()) { return startExampleMeshWith(nil) }

// startExampleMeshWith is startExampleMesh with an edge that validates
// payloads against schemas and carries their types as protobuf on the
// binary wire (nil: no schemas).
func startExampleMeshWith(schemas *schema.Registry) (url string, stop func()) {
	dir, err := os.MkdirTemp("", "natter-example-")
	must(err)
	quiet := slog.New(slog.DiscardHandler)
	srv, err := natsd.Start(natsd.Config{Addr: "127.0.0.1:0", StoreDir: dir, Logger: quiet})
	must(err)
	nc, err := nats.Connect(srv.ClientURL())
	must(err)
	w, err := worker.New(nc, worker.Config{Logger: quiet})
	must(err)
	must(chat.Register(w))
	must(nc.Flush())
	cfg := edge.DefaultConfig()
	cfg.NATS.Conn = nc
	cfg.Auth.DevMode = true
	cfg.DurableRooms = edge.DefaultDurableRoomsConfig("orders-*")
	cfg.Logger = quiet
	cfg.Schemas = schemas
	cfg.WebSocket.ShutdownSpread = time.Millisecond
	e, err := edge.New(context.Background(), cfg)
	must(err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(err)
	mux := http.NewServeMux()
	mux.Handle(e.Path(), e)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	exampleNATS = nc
	return "ws://" + ln.Addr().String() + e.Path(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = hs.Shutdown(ctx)
		_ = e.Shutdown(ctx)
		_ = w.Drain(ctx)
		nc.Close()
		srv.Shutdown()
		_ = os.RemoveAll(dir)
	}
}

// publishNews publishes a "news" envelope to a room, as any service can.
func publishNews(room, payload string) {
	must(exampleNATS.Publish("natter.out.room."+room, []byte(`{"type":"news","payload":`+payload+`}`)))
}

// publishOrder stores an "order" envelope in a durable room, acknowledged,
// as a Go service does.
func publishOrder(room, payload string) {
	_, err := worker.NewPublisher(exampleNATS, envelope.DefaultNamespace).ToDurableRoom(context.Background(), room, &envelope.Envelope{Type: "order", Payload: json.RawMessage(payload)})
	must(err)
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}
