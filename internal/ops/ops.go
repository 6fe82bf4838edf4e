// Package ops is the admin listener of the Natter binaries: liveness,
// readiness and Prometheus metrics, on an address apart from client
// traffic.
//
//	GET /healthz   200 while the process serves HTTP at all (liveness)
//	GET /readyz    200 when every readiness check passes, else 503 with the
//	               failing check's reason (NATS disconnected, draining)
//	GET /metrics   Prometheus text format
package ops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/natter/natter/internal/routine"
)

// Check is one readiness check: nil when ready.
type Check func() error

// Server serves /healthz, /readyz and /metrics.
type Server struct {
	Registry *prometheus.Registry
	srv      *http.Server
	ln       net.Listener
	log      *slog.Logger
	serving  routine.Group // the Serve goroutine, which Shutdown waits for

	mu     sync.Mutex
	checks []namedCheck
	mux    *http.ServeMux
}

type namedCheck struct {
	name  string
	check Check
}

// New builds an admin server on addr with a registry holding the Go
// runtime and process collectors. Listen with Start.
func New(addr string, log *slog.Logger) *Server {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s := &Server{Registry: reg, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	s.mux = mux
	s.srv = &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return s
}

// EnablePprof serves net/http/pprof's profiles under /debug/pprof/. They
// reveal internals and cost CPU while they run: keep the admin port private.
func (s *Server) EnablePprof() {
	s.mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	s.mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	s.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	s.mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	s.mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}

// AddCheck adds a readiness check.
func (s *Server) AddCheck(name string, c Check) {
	s.mu.Lock()
	s.checks = append(s.checks, namedCheck{name, c})
	s.mu.Unlock()
}

// Ready runs the checks: nil, or the first failure.
func (s *Server) Ready() error {
	s.mu.Lock()
	checks := append([]namedCheck(nil), s.checks...)
	s.mu.Unlock()
	for _, c := range checks {
		if err := c.check(); err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
	}
	return nil
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if err := s.Ready(); err != nil {
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

// Start listens and serves in the background. An empty address disables
// the admin listener.
func (s *Server) Start() error {
	if s.srv.Addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", s.srv.Addr)
	if err != nil {
		return fmt.Errorf("ops: listen %s: %w", s.srv.Addr, err)
	}
	s.ln = ln
	s.serving.Go(func(context.Context) {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("ops: admin listener stopped", "err", err)
		}
	})
	s.log.Info("admin listening", "addr", ln.Addr().String())
	return nil
}

// Addr is the listening address, once started.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Shutdown stops the listener, waits for the requests in progress and for
// the serving goroutine, or for ctx. It is idempotent.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.ln == nil {
		return nil
	}
	err := s.srv.Shutdown(ctx) // Serve returns at once
	s.serving.Stop()
	if werr := s.serving.Wait(ctx); err == nil {
		err = werr
	}
	return err
}

// ErrDraining fails readiness once a shutdown has begun.
var ErrDraining = errors.New("draining")

// Draining is a readiness check that fails from Start on: the first step
// of a graceful shutdown, so load balancers stop routing first.
type Draining struct{ on atomic.Bool }

// Start makes Check fail.
func (d *Draining) Start() { d.on.Store(true) }

// Check is the readiness check.
func (d *Draining) Check() error {
	if d.on.Load() {
		return ErrDraining
	}
	return nil
}

// NewLogger is the process's structured logger on stderr, in format "text"
// or "json" (--log-format).
func NewLogger(format string, level slog.Level) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// ErrNATSDisconnected fails readiness while the NATS connection is down.
var ErrNATSDisconnected = errors.New("NATS disconnected")

// NATSCheck is ready while nc is connected.
func NATSCheck(nc *nats.Conn) Check {
	return func() error {
		if !nc.IsConnected() {
			return ErrNATSDisconnected
		}
		return nil
	}
}

// NATSCollector exports a NATS connection's counters: messages and bytes
// in and out, and reconnects.
func NATSCollector(nc *nats.Conn) prometheus.Collector {
	return &natsCollector{nc: nc}
}

type natsCollector struct{ nc *nats.Conn }

var (
	natsMsgs       = prometheus.NewDesc("natter_nats_messages_total", "Messages on the NATS connection, by direction.", []string{"direction"}, nil)
	natsBytes      = prometheus.NewDesc("natter_nats_bytes_total", "Payload bytes on the NATS connection, by direction.", []string{"direction"}, nil)
	natsReconnects = prometheus.NewDesc("natter_nats_reconnects_total", "Reconnects of the NATS connection.", nil, nil)
	natsConnected  = prometheus.NewDesc("natter_nats_connected", "1 while the NATS connection is up.", nil, nil)
)

func (c *natsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- natsMsgs
	ch <- natsBytes
	ch <- natsReconnects
	ch <- natsConnected
}

func (c *natsCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.nc.Stats()
	ch <- prometheus.MustNewConstMetric(natsMsgs, prometheus.CounterValue, float64(st.InMsgs), "in")
	ch <- prometheus.MustNewConstMetric(natsMsgs, prometheus.CounterValue, float64(st.OutMsgs), "out")
	ch <- prometheus.MustNewConstMetric(natsBytes, prometheus.CounterValue, float64(st.InBytes), "in")
	ch <- prometheus.MustNewConstMetric(natsBytes, prometheus.CounterValue, float64(st.OutBytes), "out")
	ch <- prometheus.MustNewConstMetric(natsReconnects, prometheus.CounterValue, float64(st.Reconnects))
	up := 0.0
	if c.nc.IsConnected() {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(natsConnected, prometheus.GaugeValue, up)
}
