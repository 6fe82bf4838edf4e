package edge

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"golang.org/x/time/rate"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/internal/chat"
	"github.com/natter/natter/internal/demo"
	"github.com/natter/natter/internal/natsd"
	"github.com/natter/natter/internal/ops"
	"github.com/natter/natter/internal/schema"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/worker"
)

// RunConfig is what cmd/edge gives Run: the edge's own Config (without a
// NATS connection) plus the process around it.
type RunConfig struct {
	Edge Config
	// Listen is the HTTP address for WebSocket upgrades. Default ":8080".
	Listen string
	// Listener, when set, is used instead of listening on Listen.
	Listener net.Listener
	// HandshakeTimeout bounds reading a handshake's request headers, so that
	// a slowloris client cannot hold connections open. Default 10s.
	HandshakeTimeout time.Duration
	// MaxHeaderBytes bounds a handshake's request headers (431 above).
	// Default 32 KiB.
	MaxHeaderBytes int
	// NATSURL lists NATS servers, comma-separated. Empty means single-binary
	// mode: an embedded nats-server, the built-in handlers in-process, and
	// dev mode.
	NATSURL string
	// NATSListen is the embedded server's client address. Default
	// "127.0.0.1:4222".
	NATSListen string
	// DataDir is the embedded server's JetStream directory. Default
	// "./natter-data".
	DataDir string
	// SchemaDirs are directories of the user's .proto files, compiled at
	// start-up along with the shipped schemas.
	SchemaDirs []string
	// StrictTypes rejects message types that have no schema.
	StrictTypes bool
	// ShutdownTimeout bounds the whole shutdown. Default 10s.
	ShutdownTimeout time.Duration
	// NATSOptions are extra nats.go options: credentials and TLS.
	NATSOptions []nats.Option
	// JWT verifies tokens when it has a key source (secret, public keys or
	// JWKS URL).
	JWT auth.JWTConfig
	// AuthCallout asks an auth service over NATS (natter.auth.connect and
	// natter.auth.refresh) instead of verifying JWTs itself.
	AuthCallout bool
	// JoinCallout asks natter.auth.join about client joins that no grant or
	// public room allows.
	JoinCallout bool
	// AdminListen is the admin listener's address (/healthz, /readyz,
	// /metrics). Empty: none.
	AdminListen string
	// Pprof serves net/http/pprof on the admin listener.
	Pprof bool
	// DrainDelay is how long readiness reports failure before the edge
	// stops accepting and closes sockets at shutdown, so that load
	// balancers stop routing to it first. Default 0.
	DrainDelay time.Duration
	// CalloutTimeout bounds one callout request. Default 2s; no answer
	// refuses (fails closed).
	CalloutTimeout time.Duration
}

// hasAuth reports whether rc configures JWT verification or the callout.
func (rc *RunConfig) hasAuth() bool {
	return len(rc.JWT.HMACSecret) > 0 || len(rc.JWT.PublicKeys) > 0 || rc.JWT.JWKSURL != "" || rc.AuthCallout
}

// authenticator builds the Authenticator and join authorizer RunConfig
// asks for, on nc. close releases the JWKS refresher.
func (rc *RunConfig) authenticator(ctx context.Context, nc *nats.Conn) (close func(), err error) {
	hasJWT := len(rc.JWT.HMACSecret) > 0 || len(rc.JWT.PublicKeys) > 0 || rc.JWT.JWKSURL != ""
	if rc.Edge.EdgeID == "" {
		rc.Edge.EdgeID = nuid.Next()
	}
	callout := &auth.Callout{NATS: nc, Namespace: rc.Edge.Namespace, Edge: rc.Edge.EdgeID, Timeout: rc.CalloutTimeout}
	if callout.Namespace == (envelope.Namespace{}) {
		callout.Namespace = envelope.DefaultNamespace
	}
	if rc.JoinCallout {
		rc.Edge.JoinAuthorizer = callout
	}
	switch {
	case hasJWT && rc.AuthCallout:
		return nil, fmt.Errorf("%w: choose JWT verification or the auth callout, not both", ErrInvalidConfig)
	case rc.AuthCallout:
		rc.Edge.Auth = callout
	case hasJWT:
		jctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		v, err := auth.NewJWT(jctx, rc.JWT)
		if err != nil {
			return nil, err
		}
		rc.Edge.Auth = v
		return v.Close, nil
	}
	return func() {}, nil
}

// Run runs an edge until ctx ends, then shuts down in order: stop accepting,
// close sockets with 4000 (spread), drain the built-in worker, drain NATS,
// stop the embedded server.
func Run(ctx context.Context, rc RunConfig) error {
	log := rc.Edge.Logger
	if log == nil {
		log = slog.Default()
		rc.Edge.Logger = log
	}
	if rc.Listen == "" {
		rc.Listen = ":8080"
	}
	if rc.DataDir == "" {
		rc.DataDir = "natter-data"
	}
	if rc.ShutdownTimeout <= 0 {
		rc.ShutdownTimeout = 10 * time.Second
	}
	if rc.HandshakeTimeout <= 0 {
		rc.HandshakeTimeout = 10 * time.Second
	}
	if rc.MaxHeaderBytes <= 0 {
		rc.MaxHeaderBytes = 32 << 10
	}

	reg, err := schema.Load(schema.Config{Dirs: rc.SchemaDirs, Strict: rc.StrictTypes})
	if err != nil {
		return err
	}
	rc.Edge.Schemas = reg
	log.Info("schemas loaded", "types", len(reg.Types()), "dirs", rc.SchemaDirs, "strict", rc.StrictTypes)

	single := rc.NATSURL == ""
	var embedded *natsd.Server
	var nc *nats.Conn
	errLimit := rate.NewLimiter(1, 5)
	opts := append([]nats.Option{
		nats.Name("natter-edge"),
		// Permission violations and slow-consumer errors arrive here, not
		// as call errors; log them, sampled.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if errLimit.Allow() {
				subject := ""
				if sub != nil {
					subject = sub.Subject
				}
				log.Error("edge: NATS error", "subscription", subject, "err", err)
			}
		}),
		nats.MaxReconnects(-1),
		nats.ReconnectBufSize(8 << 20),
	}, rc.NATSOptions...)
	if single {
		embedded, err = natsd.Start(natsd.Config{Addr: rc.NATSListen, StoreDir: rc.DataDir, Logger: log})
		if err != nil {
			return err
		}
		defer embedded.Shutdown()
		nc, err = nats.Connect(embedded.ClientURL(), append(opts, nats.InProcessServer(embedded.NATS()))...)
		// Dev mode, unless authentication is configured: then the single
		// binary behaves like a production edge (no ?user=, no open rooms
		// or origins beyond the flags).
		rc.Edge.DevMode = !rc.hasAuth()
	} else {
		// Dev mode stays off against a real NATS unless asked for by name
		// (--insecure-dev-users), for local multi-edge set-ups and tests.
		nc, err = nats.Connect(rc.NATSURL, opts...)
	}
	if rc.Edge.DevMode {
		log.Warn("dev mode: the ?" + cmp.Or(rc.Edge.UserParam, "user") + "= query parameter sets the user id without authentication; do not expose this edge")
	}
	if err != nil {
		return fmt.Errorf("edge: connect NATS: %w", err)
	}
	defer nc.Close()
	rc.Edge.NATS = nc
	closeAuth, err := rc.authenticator(ctx, nc)
	if err != nil {
		return err
	}
	defer closeAuth()
	log.Info("authentication", "jwt", rc.Edge.Auth != nil && !rc.AuthCallout, "callout", rc.AuthCallout,
		"joinCallout", rc.JoinCallout, "anonymous", rc.Edge.Anonymous || rc.Edge.DevMode)

	var w *worker.Worker
	if single {
		if w, err = worker.New(nc, worker.Config{Namespace: rc.Edge.Namespace, Logger: log}); err != nil {
			return err
		}
		if err = chat.Register(w); err != nil {
			return err
		}
	}

	admin := ops.New(rc.AdminListen, log)
	if rc.Pprof {
		admin.EnablePprof()
	}
	rc.Edge.Registerer = admin.Registry
	admin.Registry.MustRegister(ops.NATSCollector(nc))
	var draining ops.Draining
	admin.AddCheck("nats", ops.NATSCheck(nc))
	admin.AddCheck("drain", draining.Check)
	e, err := New(rc.Edge)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle(e.Path(), e)
	mux.Handle("GET /schemas", reg)
	if rc.Edge.DevMode && e.Path() != "/" {
		// The browser demo picks its user with ?user=, so it only makes
		// sense (and is only served) in dev mode.
		mux.Handle("/", demo.Handler(e.Path()))
	} else {
		mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "Natter edge %s. WebSocket endpoint: %s\n", e.ID(), e.Path())
		})
	}
	ln := rc.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", rc.Listen); err != nil {
			return fmt.Errorf("edge: listen: %w", err)
		}
	}
	// The admin listener starts once the WebSocket port is open, so
	// /readyz never answers for an edge that cannot serve, and stops after
	// the edge and NATS have drained.
	if err := admin.Start(); err != nil {
		return err
	}
	defer func() {
		actx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = admin.Shutdown(actx)
	}()
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: rc.HandshakeTimeout,
		MaxHeaderBytes:    rc.MaxHeaderBytes,
		IdleTimeout:       rc.HandshakeTimeout, // only plain HTTP keep-alives; WebSockets are hijacked
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	natsURL := nc.ConnectedUrl()
	if embedded != nil {
		natsURL = embedded.ClientURL()
	}
	log.Info("edge listening", "addr", ln.Addr().String(), "path", e.Path(), "nats", natsURL, "edge", e.ID(), "single", single)
	if rc.Edge.DevMode {
		log.Info("demo page", "url", demoURL(ln.Addr()))
	}

	select {
	case <-ctx.Done():
	case err = <-serveErr:
		log.Error("edge: http server stopped", "err", err)
	}
	// The documented order: readiness fails, (DrainDelay), the listener
	// stops accepting, sockets close with 4000 spread over ShutdownSpread,
	// the built-in worker drains, NATS drains, the embedded server stops,
	// the admin listener stops last.
	draining.Start()
	log.Info("edge shutting down", "drainDelay", rc.DrainDelay)
	if rc.DrainDelay > 0 {
		time.Sleep(rc.DrainDelay)
	}
	sctx, cancel := context.WithTimeout(context.Background(), rc.ShutdownTimeout)
	defer cancel()
	var errs []error
	errs = append(errs, srv.Shutdown(sctx)) // stops accepting; WebSockets are hijacked, so the edge closes them
	errs = append(errs, e.Shutdown(sctx))
	if w != nil {
		errs = append(errs, w.Drain(sctx))
	}
	errs = append(errs, drain(sctx, nc))
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// drain drains nc and waits for it to close, or for ctx.
func drain(ctx context.Context, nc *nats.Conn) error {
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		return err
	}
	select {
	case <-closed:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// demoURL is where a browser on this machine finds the demo page.
func demoURL(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return "http://" + addr.String() + "/"
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, port) + "/"
}
