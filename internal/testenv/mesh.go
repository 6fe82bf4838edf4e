package testenv

import (
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/natsd"
	"github.com/natter/natter/pkg/worker"
)

// Mesh is the tests' one mesh: an embedded nats-server of the test's own,
// a plain NATS connection as any service would have, the built-in handlers
// in-process, and an edge served over loopback. Every part is stopped at
// cleanup, so a test with a mesh of its own can run in parallel.
type Mesh struct {
	NATS   *natsd.Server
	URL    string         // the NATS client URL
	NC     *nats.Conn     // a plain NATS connection, as a service would have
	Worker *worker.Worker // the built-in handlers; nil with MeshOptions.NoWorker
	Edge   *Edge          // the edge NewMesh started; nil with MeshOptions.NoEdge
}

// MeshOptions says what NewMesh starts besides the server and the
// connection.
type MeshOptions struct {
	// Edge is the config of the edge to start; a nil NATS.Conn gets a
	// connection of the edge's own. Nil: DevEdge().
	Edge *edge.Config
	// NoEdge starts no edge: the test starts its own with StartEdge.
	NoEdge bool
	// NoWorker leaves out the built-in handlers.
	NoWorker bool
}

// DevEdge is edge.DefaultConfig in dev mode (a client names its user with
// ?user=), the edge config of most tests.
func DevEdge() edge.Config {
	cfg := edge.DefaultConfig()
	cfg.Auth.DevMode = true
	return cfg
}

// NewMesh starts a mesh: the server, a connection, the built-in handlers on
// a connection of their own (unless NoWorker) and an edge (unless NoEdge).
func NewMesh(t testing.TB, opts MeshOptions) *Mesh {
	t.Helper()
	srv := NATS(t)
	m := &Mesh{NATS: srv, URL: srv.ClientURL()}
	m.NC = m.Connect(t)
	if !opts.NoWorker {
		m.Worker = Worker(t, m.Connect(t))
	}
	if !opts.NoEdge {
		cfg := DevEdge()
		if opts.Edge != nil {
			cfg = *opts.Edge
		}
		m.Edge = m.StartEdge(t, cfg)
	}
	return m
}

// Connect opens another NATS connection to the mesh's server.
func (m *Mesh) Connect(t testing.TB) *nats.Conn {
	t.Helper()
	return Connect(t, m.URL)
}

// StartEdge serves another edge on the mesh (StartEdge); a nil
// cfg.NATS.Conn gets a connection of the edge's own.
func (m *Mesh) StartEdge(t testing.TB, cfg edge.Config) *Edge {
	t.Helper()
	if cfg.NATS.Conn == nil {
		cfg.NATS.Conn = m.Connect(t)
	}
	return StartEdge(t, cfg)
}
