// Package app is the edge command's wiring around an edge.Edge: NATS (an
// embedded nats-server in single-binary mode, or a cluster), the
// authenticator, the schemas, the built-in handlers and the demo page in
// single-binary mode, the admin listener, the HTTP server and the ordered
// shutdown. cmd/edge parses its flags into a Config and calls Run;
// internal/edge knows none of this.
package app

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/time/rate"

	"github.com/natter/natter/internal/assistant"
	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/internal/chat"
	"github.com/natter/natter/internal/demo"
	"github.com/natter/natter/internal/edge"
	"github.com/natter/natter/internal/natsd"
	"github.com/natter/natter/internal/natsopt"
	"github.com/natter/natter/internal/ops"
	"github.com/natter/natter/internal/routine"
	"github.com/natter/natter/internal/schema"
	"github.com/natter/natter/internal/telemetry"
	"github.com/natter/natter/internal/virtual"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/worker"
)

// Default HTTP addresses of Run. A dev-mode edge (anyone may claim any
// user) listens on loopback unless told otherwise.
const (
	DefaultListen    = ":8080"
	DefaultDevListen = "127.0.0.1:8080"
)

// Config is what cmd/edge gives Run: the edge's own Config (without a
// NATS connection) plus the process around it. Its fields are the
// command's flags, and Run's errors name the flags.
type Config struct {
	Edge edge.Config
	// Listen is the HTTP address for WebSocket upgrades. Default
	// DefaultListen, or DefaultDevListen in dev mode.
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
	// SetupTimeout bounds the set-up before the edge serves: fetching the
	// JWKS and edge.New (JetStream streams and buckets, which a cluster
	// still electing its leaders may refuse for a while). Default 1m.
	SetupTimeout time.Duration
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
	// Virtual, when set, has the edge open and hold VIRTUAL connections
	// (in-memory, not TCP) through its own handshake path: load tests only
	// (internal/virtual, docs/scale.md). It needs dev mode. Default nil:
	// none.
	Virtual *virtual.Config
}

// DefaultConfig returns the defaults of the edge command: edge.DefaultConfig
// and those of the process around it. cmd/edge's flags start from it.
func DefaultConfig() Config {
	return Config{
		Edge:             edge.DefaultConfig(),
		HandshakeTimeout: 10 * time.Second,
		MaxHeaderBytes:   32 << 10,
		NATSListen:       "127.0.0.1:4222",
		DataDir:          "natter-data",
		ShutdownTimeout:  10 * time.Second,
		SetupTimeout:     time.Minute,
		JWT:              auth.DefaultJWTConfig(),
		CalloutTimeout:   auth.DefaultCalloutTimeout,
	}
}

// hasAuth reports whether rc configures JWT verification or the callout.
func (rc *Config) hasAuth() bool {
	return len(rc.JWT.HMACSecret) > 0 || len(rc.JWT.PublicKeys) > 0 || rc.JWT.JWKSURL != "" || rc.AuthCallout
}

// authenticator builds the Authenticator and join authorizer rc
// asks for, on nc. close releases the JWKS refresher.
func (rc *Config) authenticator(ctx context.Context, nc *nats.Conn) (close func(), err error) {
	hasJWT := len(rc.JWT.HMACSecret) > 0 || len(rc.JWT.PublicKeys) > 0 || rc.JWT.JWKSURL != ""
	if rc.Edge.EdgeID == "" {
		rc.Edge.EdgeID = nuid.Next()
	}
	callout := &auth.Callout{NATS: nc, Namespace: rc.Edge.NATS.Namespace, Edge: rc.Edge.EdgeID, Timeout: rc.CalloutTimeout}
	if callout.Namespace == (envelope.Namespace{}) {
		callout.Namespace = envelope.DefaultNamespace
	}
	if rc.JoinCallout {
		rc.Edge.Auth.JoinAuthorizer = callout
	}
	switch {
	case hasJWT && rc.AuthCallout:
		return nil, fmt.Errorf("%w: choose JWT verification or the auth callout, not both", edge.ErrInvalidConfig)
	case rc.AuthCallout:
		rc.Edge.Auth.Authenticator = callout
	case hasJWT:
		v, err := auth.NewJWT(ctx, rc.JWT)
		if err != nil {
			return nil, err
		}
		rc.Edge.Auth.Authenticator = v
		return v.Close, nil
	}
	return func() {}, nil
}

// Run runs an edge until ctx ends, then shuts down in order: stop accepting,
// close sockets with 4000 (spread), drain the built-in worker, drain NATS,
// stop the embedded server.
func Run(ctx context.Context, rc Config) error {
	log := rc.Edge.Logger
	if log == nil {
		log = slog.Default()
		rc.Edge.Logger = log
	}
	// Zero fields take DefaultConfig's values, the one source of defaults.
	def := DefaultConfig()
	rc.DataDir = cmp.Or(rc.DataDir, def.DataDir)
	rc.ShutdownTimeout = cmp.Or(max(rc.ShutdownTimeout, 0), def.ShutdownTimeout)
	rc.SetupTimeout = cmp.Or(max(rc.SetupTimeout, 0), def.SetupTimeout)
	rc.HandshakeTimeout = cmp.Or(max(rc.HandshakeTimeout, 0), def.HandshakeTimeout)
	rc.MaxHeaderBytes = cmp.Or(max(rc.MaxHeaderBytes, 0), def.MaxHeaderBytes)

	single := rc.NATSURL == ""
	if !single && !rc.hasAuth() && !rc.Edge.Auth.Anonymous && !rc.Edge.Auth.DevMode {
		return errNoAuth
	}
	if rc.Virtual != nil {
		if err := rc.Virtual.Validate(); err != nil {
			return err
		}
		if !rc.Edge.Auth.DevMode && (!single || rc.hasAuth()) {
			return fmt.Errorf("%w: --virtual-conns needs dev-mode user ids (?user=): add --insecure-dev-users, or run single-binary mode without auth flags", edge.ErrInvalidConfig)
		}
	}

	reg, err := schema.Load(schema.Config{Dirs: rc.SchemaDirs, Strict: rc.StrictTypes})
	if err != nil {
		return err
	}
	rc.Edge.Schemas = reg
	log.Info("schemas loaded", "types", len(reg.Types()), "dirs", rc.SchemaDirs, "strict", rc.StrictTypes)

	// Tracing is the standard OTEL_* variables' to turn on; off, the edge
	// makes no spans (docs/design/tracing.md). The spans still buffered
	// are flushed when Run returns.
	if rc.Edge.Tracing.Provider == nil {
		tp, stopTracing, err := telemetry.Setup(ctx, "natter-edge")
		if err != nil {
			return err
		}
		if tp != nil {
			rc.Edge.Tracing.Provider = tp
			defer func() {
				fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := stopTracing(fctx); err != nil {
					log.Warn("tracing: flushing spans failed", "err", err)
				}
			}()
			log.Info("tracing on", "natsTraceDest", rc.Edge.Tracing.NATSTraceDest)
		} else if rc.Edge.Tracing.NATSTraceDest != "" {
			log.Warn("--nats-trace-dest has no effect with tracing off: set the OTEL_* variables (docs/protocol.md, \"Trace context\")")
		}
	}

	// setup bounds everything before the edge serves: it ends with ctx (a
	// signal), after SetupTimeout, or at once with a permissions violation
	// that NATS reports meanwhile (it comes to the error handler, not as
	// the failed call's error, which would only time out).
	bounded, cancelSetup := context.WithTimeout(ctx, rc.SetupTimeout)
	defer cancelSetup()
	setup, failSetup := context.WithCancelCause(bounded)
	defer failSetup(nil)
	var embedded *natsd.Server
	var nc *nats.Conn
	errLimit := rate.NewLimiter(1, 5)
	opts := append([]nats.Option{
		nats.Name("natter-edge"),
		// Permission violations and slow-consumer errors arrive here, not
		// as call errors; log them, sampled.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				failSetup(err) // no effect once set up
			}
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
		rc.Edge.Auth.DevMode = !rc.hasAuth()
	} else {
		// Dev mode stays off against a real NATS unless asked for by name
		// (--insecure-dev-users), for local multi-edge set-ups and tests.
		nc, err = nats.Connect(rc.NATSURL, opts...)
	}
	if rc.Edge.Auth.DevMode {
		log.Warn("dev mode: the ?" + cmp.Or(rc.Edge.Auth.UserParam, edge.DefaultConfig().Auth.UserParam) + "= query parameter sets the user id without authentication; do not expose this edge")
	}
	if err != nil {
		return fmt.Errorf("edge: connect NATS: %w", err)
	}
	defer nc.Close()
	rc.Edge.NATS.Conn = nc
	closeAuth, err := rc.authenticator(setup, nc)
	if err != nil {
		return rc.setupError(ctx, err)
	}
	defer closeAuth()
	log.Info("authentication", "jwt", rc.Edge.Auth.Authenticator != nil && !rc.AuthCallout, "callout", rc.AuthCallout,
		"joinCallout", rc.JoinCallout, "anonymous", rc.Edge.Auth.Anonymous || rc.Edge.Auth.DevMode)

	var w *worker.Worker
	var asst *assistant.Assistant // the demo's "assistant" room
	if single {
		if w, err = worker.New(nc, worker.Config{Namespace: rc.Edge.NATS.Namespace, Logger: log, TracerProvider: cmp.Or[trace.TracerProvider](rc.Edge.Tracing.Provider, noop.NewTracerProvider())}); err != nil {
			return err
		}
		if err = chat.Register(w); err != nil {
			return err
		}
		if asst, err = assistant.Register(w, assistant.Config{Logger: log}); err != nil {
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
	e, err := edge.New(setup, rc.Edge)
	if err != nil {
		return rc.setupError(ctx, err)
	}
	failSetup(nil) // set up: later permission violations are only logged
	mux := http.NewServeMux()
	mux.Handle(e.Path(), e)
	for _, p := range e.FallbackPaths() {
		mux.Handle(p, e)
	}
	mux.Handle("GET /schemas", reg)
	if rc.Edge.Auth.DevMode && e.Path() != "/" {
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
		if rc.Listen == "" {
			rc.Listen = DefaultListen
			if rc.Edge.Auth.DevMode {
				rc.Listen = DefaultDevListen
			}
		}
		if ln, err = net.Listen("tcp", rc.Listen); err != nil {
			return fmt.Errorf("edge: listen (--listen %s): %w", rc.Listen, err)
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
	var virt *virtual.Set
	if rc.Virtual != nil {
		vc := *rc.Virtual
		vc.Handler, vc.Path, vc.UserParam = e, e.Path(), cmp.Or(rc.Edge.Auth.UserParam, edge.DefaultConfig().Auth.UserParam)
		vc.Logger, vc.Registerer = log, admin.Registry
		if virt, err = virtual.Start(ctx, vc); err != nil {
			return err
		}
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: rc.HandshakeTimeout,
		MaxHeaderBytes:    rc.MaxHeaderBytes,
		IdleTimeout:       rc.HandshakeTimeout, // only plain HTTP keep-alives; WebSockets are hijacked
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	// The server's goroutine ends when srv.Shutdown below closes the
	// listener, or with an error that ends Run; serving waits for it.
	var serving routine.Group
	defer func() { _ = serving.Wait(context.Background()) }()
	serveErr := make(chan error, 1)
	serving.Go(func(context.Context) { serveErr <- srv.Serve(ln) })
	natsURL := nc.ConnectedUrl()
	if embedded != nil {
		natsURL = embedded.ClientURL()
	}
	serves := e.Path() + " (WebSocket), " + strings.Join(e.FallbackPaths(), ", ") + " (fallback), /schemas"
	if rc.Edge.Auth.DevMode {
		serves += ", / (demo page)"
	}
	log.Info("edge listening", "addr", ln.Addr().String(), "path", e.Path(), "nats", natsURL, "edge", e.ID(), "single", single,
		"devMode", rc.Edge.Auth.DevMode, "loopbackOnly", isLoopback(ln.Addr().String()), "serves", serves)
	if rc.Edge.Auth.DevMode {
		log.Info("demo page", "url", demoURL(ln.Addr()))
		if !isLoopback(ln.Addr().String()) {
			log.Warn("dev mode edge listens beyond loopback: whoever reaches "+ln.Addr().String()+" can connect as any user with ?user= and join any room; "+
				"listen on loopback (--listen "+DefaultDevListen+") or configure authentication", "addr", ln.Addr().String())
		}
	}
	if embedded != nil && !isLoopback(embedded.ClientURL()) {
		log.Warn("embedded NATS listens beyond loopback without authentication: whoever reaches it can read and publish every message; "+
			"keep --nats-listen on loopback", "url", embedded.ClientURL())
	}

	select {
	case <-ctx.Done():
	case err = <-serveErr:
		log.Error("edge: http server stopped", "err", err)
	}
	if virt != nil {
		virt.Stop() // no more virtual connections open; the edge closes those it holds, below
	}
	// The documented order: readiness fails, (DrainDelay), the listener
	// stops accepting, sockets close with 4000 spread over ShutdownSpread,
	// the built-in worker drains, NATS drains, the embedded server stops,
	// the admin listener stops last.
	draining.Start()
	e.Drain() // new handshakes are refused with 503 from now on, as readiness is
	log.Info("edge shutting down", "drainDelay", rc.DrainDelay)
	if rc.DrainDelay > 0 {
		time.Sleep(rc.DrainDelay)
	}
	sctx, cancel := context.WithTimeout(context.Background(), rc.ShutdownTimeout)
	defer cancel()
	var errs []error
	// srv.Shutdown stops accepting and then waits for the requests in
	// progress, among them the fallback streams, which e.Shutdown closes
	// (WebSockets are hijacked: the edge alone closes them). So the two
	// run together.
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Shutdown(sctx) }()
	errs = append(errs, e.Shutdown(sctx))
	errs = append(errs, <-srvDone)
	if w != nil {
		errs = append(errs, w.Drain(sctx), asst.Close(sctx))
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

// errNoAuth is Run's refusal to start an edge on --nats that nobody
// could connect to.
var errNoAuth = fmt.Errorf("%w: no authentication for an edge with --nats: pass --jwt-secret-file (or NATTER_JWT_SECRET), "+
	"--jwt-public-key or --jwks-url to verify tokens, --auth-callout to ask an auth service, or --anonymous to admit connections "+
	"without a token (and without a user id); for local development only, --insecure-dev-users (INSECURE: ?user= sets the user id, "+
	"any room and origin, the demo page)", edge.ErrInvalidConfig)

// setupError explains a failed set-up with the flags that fix it. New's
// errors already say what to change on the NATS server; this adds the
// flags that do without what needed it. ctx is Run's: when it ended, a
// signal interrupted the set-up.
func (rc *Config) setupError(ctx context.Context, err error) error {
	var needs, off []string
	if rc.Edge.Presence != nil {
		needs, off = append(needs, "presence"), append(off, "--presence=false")
	}
	if rc.Edge.DurableRooms != nil {
		needs, off = append(needs, "durable rooms"), append(off, "no --durable-rooms")
	}
	if rc.Edge.DurableMessages != nil {
		needs, off = append(needs, "durable messages"), append(off, "no --durable-types")
	}
	if rc.Edge.Streams != nil {
		needs, off = append(needs, "response streams"), append(off, "--streams=false")
	}
	without := ""
	if len(needs) > 0 {
		without = fmt.Sprintf(" (or do without %s: %s)", strings.Join(needs, " and "), strings.Join(off, ", "))
	}
	switch {
	case errors.Is(err, natsopt.ErrNoJetStream):
		return fmt.Errorf("edge: JetStream is not available to this edge%s: %w", without, err)
	case errors.Is(err, nats.ErrPermissionViolation):
		return fmt.Errorf("edge: NATS denied a permission during set-up: give the edge's NATS user the edge role's permissions "+
			"(deploy/nats: among others the JetStream API, $JS.API.>)%s: %w", without, err)
	case ctx.Err() != nil:
		return fmt.Errorf("edge: set-up interrupted: %w", err)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("edge: set-up did not finish within --setup-timeout %s: %w", rc.SetupTimeout, err)
	}
	return err
}

// isLoopback reports whether a listener's address (host:port, or a URL
// such as nats://host:port) is on loopback only.
func isLoopback(addr string) bool {
	if u, err := url.Parse(addr); err == nil && u.Host != "" {
		addr = u.Host
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
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
