// Package natsd runs the embedded nats-server of single-binary mode: an
// in-process NATS server with JetStream, listening on loopback so workers,
// services and the nats CLI can connect.
package natsd

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ErrInvalidConfig wraps every configuration error of this package.
var ErrInvalidConfig = errors.New("natsd: invalid config")

// Config configures the embedded server.
type Config struct {
	// Addr is the client listener, host:port. Default "127.0.0.1:4222".
	// Port 0 picks a free port (tests).
	Addr string
	// StoreDir is JetStream's data directory. Required.
	StoreDir string
	// ServerName names the server in logs and JetStream. Default "natter-embedded".
	ServerName string
	// ReadyTimeout bounds the wait for the server to accept clients. Default 10s.
	ReadyTimeout time.Duration
	// Logger receives a start line. Default slog.Default().
	Logger *slog.Logger
}

// Server is a started embedded nats-server.
type Server struct {
	ns *server.Server
}

// Start starts the server and waits until it accepts clients.
func Start(cfg Config) (*Server, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:4222"
	}
	if cfg.ServerName == "" {
		cfg.ServerName = "natter-embedded"
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.StoreDir == "" {
		return nil, fmt.Errorf("%w: StoreDir is required", ErrInvalidConfig)
	}
	host, portStr, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("%w: Addr %q: %v", ErrInvalidConfig, cfg.Addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("%w: Addr %q: bad port", ErrInvalidConfig, cfg.Addr)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: cfg.ServerName,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		return nil, fmt.Errorf("natsd: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(cfg.ReadyTimeout) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return nil, fmt.Errorf("natsd: not ready within %s (is %s in use?)", cfg.ReadyTimeout, cfg.Addr)
	}
	cfg.Logger.Info("embedded NATS started", "url", ns.ClientURL(), "store", cfg.StoreDir)
	return &Server{ns: ns}, nil
}

// ClientURL is the URL clients connect to, e.g. nats://127.0.0.1:4222.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// NATS returns the underlying server, for nats.InProcessServer.
func (s *Server) NATS() *server.Server { return s.ns }

// Shutdown stops the server and waits for it. It is idempotent.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}
