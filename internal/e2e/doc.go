// Package e2e holds Natter's process-level tests: the cmd/edge and
// cmd/worker binaries, built by the test, started as real processes against
// a real nats-server, and driven by real WebSocket clients.
package e2e
