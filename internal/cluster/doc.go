// Package cluster is Natter's cluster test harness. Its tests are behind the
// build tag cluster and start real processes only:
//
//   - three nats-server processes (built once from the module with go build)
//     forming one cluster with JetStream: one config file per node, the same
//     cluster name, routes to each other on loopback ports, a unique
//     server_name and a file store in a temporary directory;
//   - two cmd/edge processes connected to all three nodes, with presence
//     replicated three times (--presence-replicas 3) and dev users;
//   - two cmd/worker processes connected to all three nodes;
//   - WebSocket clients (pkg/client) and plain nats.go services.
//
// Run it with
//
//	go test -tags cluster -race -v ./internal/cluster/
//
// The tests go from the harmless to the destructive on one shared cluster:
// room, user and service messages across edges and nodes, cross-edge
// latency, RPCs spread over the workers and a worker killed with SIGKILL, a
// NATS node killed with SIGKILL, an edge killed with SIGKILL (its users
// offline exactly once within the presence lease TTL), and an edge stopped
// with SIGTERM. The figures they measure (cross-edge latency percentiles,
// recovery times) are logged and written to figures.txt in the test's
// artifact directory (kept with -artifacts).
//
// Every process and client is stopped by t.Cleanup, also when a test fails;
// the logs of the processes are printed when one does.
//
// Each process connects to NATS as its own user (edge-a, edge-b, worker-1,
// worker-2; services connect without credentials as svc), so that the
// nodes' monitoring endpoint (/connz) tells which process holds which
// connection and how many messages each worker received.
package cluster
