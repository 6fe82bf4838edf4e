package edge

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/pkg/envelope"
)

// JoinAuthorizer decides client joins that no grant allows; auth.Callout
// is one (natter.auth.join).
type JoinAuthorizer interface {
	AuthorizeJoin(ctx context.Context, req auth.JoinRequest) error
}

// admission holds the per-IP and per-user state of the handshake limits.
// Entries exist only while they count something; the ticker drops idle
// handshake limiters.
type admission struct {
	mu         sync.Mutex
	handshakes map[string]*ipLimiter // client IP -> handshake rate
	ipConns    map[string]int
	users      map[string]*userState
	lastSweep  time.Time
}

type ipLimiter struct {
	lim  *rate.Limiter
	last time.Time
}

type userState struct {
	conns int
	limit *rate.Limiter // nil without Limits.UserMessageRate
}

func (a *admission) init() {
	a.handshakes = make(map[string]*ipLimiter)
	a.ipConns = make(map[string]int)
	a.users = make(map[string]*userState)
}

// maxTrackedIPs bounds the handshake limiters kept; past it, new addresses
// share the limiter of overflowKey until idle ones are swept.
var maxTrackedIPs = 100_000 // a variable for tests

const overflowKey = "overflow"

// allowHandshake takes one handshake token of ip, or says how long to wait.
func (e *Edge) allowHandshake(ip string, now time.Time) (time.Duration, bool) {
	if e.cfg.Limits.HandshakeRate <= 0 {
		return 0, true
	}
	a := &e.adm
	a.mu.Lock()
	defer a.mu.Unlock()
	l := a.handshakes[ip]
	if l == nil && len(a.handshakes) >= maxTrackedIPs {
		// Past the bound, new addresses share one limiter: an attacker
		// with many addresses slows itself, not only everyone else.
		ip = overflowKey
		l = a.handshakes[ip]
	}
	if l == nil {
		l = &ipLimiter{lim: rate.NewLimiter(rate.Limit(e.cfg.Limits.HandshakeRate), e.cfg.Limits.HandshakeBurst)}
		a.handshakes[ip] = l
	}
	l.last = now
	return delay(l.lim, now)
}

// delay takes one token of lim at now, or reports how long until one is
// free (without taking it).
func delay(lim *rate.Limiter, now time.Time) (time.Duration, bool) {
	r := lim.ReserveN(now, 1)
	if !r.OK() {
		return time.Second, false
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d, false
	}
	return 0, true
}

// sweepHandshakes drops limiters idle long enough to be full again.
func (e *Edge) sweepHandshakes(now time.Time) {
	if e.cfg.Limits.HandshakeRate <= 0 {
		return
	}
	idle := time.Duration(float64(e.cfg.Limits.HandshakeBurst)/e.cfg.Limits.HandshakeRate*float64(time.Second)) + time.Second
	e.adm.mu.Lock()
	defer e.adm.mu.Unlock()
	if now.Sub(e.adm.lastSweep) < time.Second {
		return
	}
	e.adm.lastSweep = now
	for ip, l := range e.adm.handshakes {
		if now.Sub(l.last) > idle {
			delete(e.adm.handshakes, ip)
		}
	}
}

// reserve counts a connection of ip and user against the caps, or refuses.
// The returned release undoes it, once.
func (e *Edge) reserve(ip, user string) (release func(), reason string) {
	a := &e.adm
	a.mu.Lock()
	defer a.mu.Unlock()
	if e.cfg.Limits.MaxConnsPerIP > 0 && a.ipConns[ip] >= e.cfg.Limits.MaxConnsPerIP {
		return nil, "too many connections from this address"
	}
	var us *userState
	if user != "" {
		us = a.users[user]
		n := 0
		if us != nil {
			n = us.conns
		}
		if e.cfg.Limits.MaxConnsPerUser > 0 && e.presence != nil {
			// Presence sees the user's connections on every edge.
			n = max(n, len(e.presence.User(user).Connections))
		}
		if e.cfg.Limits.MaxConnsPerUser > 0 && n >= e.cfg.Limits.MaxConnsPerUser {
			return nil, "too many connections for this user"
		}
		if us == nil {
			us = &userState{}
			if e.cfg.Limits.UserMessageRate > 0 {
				us.limit = rate.NewLimiter(rate.Limit(e.cfg.Limits.UserMessageRate), e.cfg.Limits.UserMessageBurst)
			}
			a.users[user] = us
		}
		us.conns++
	}
	a.ipConns[ip]++
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			defer a.mu.Unlock()
			if a.ipConns[ip]--; a.ipConns[ip] <= 0 {
				delete(a.ipConns, ip)
			}
			if us != nil {
				if us.conns--; us.conns <= 0 {
					delete(a.users, user)
				}
			}
		})
	}, ""
}

// userLimiter is the shared rate limiter of user's connections, or nil.
func (e *Edge) userLimiter(user string) *rate.Limiter {
	if user == "" || e.cfg.Limits.UserMessageRate <= 0 {
		return nil
	}
	e.adm.mu.Lock()
	defer e.adm.mu.Unlock()
	if us := e.adm.users[user]; us != nil {
		return us.limit
	}
	return nil
}

// clientIP is the address the per-IP limits count: the TCP peer, or the
// last address of Config.Limits.ClientIPHeader when set.
func (e *Edge) clientIP(r *http.Request) string {
	if h := e.cfg.Limits.ClientIPHeader; h != "" {
		if v := r.Header.Values(h); len(v) > 0 {
			parts := strings.Split(v[len(v)-1], ",")
			if key, ok := ipKey(strings.TrimSpace(parts[len(parts)-1])); ok {
				return key
			}
		}
	}
	if key, ok := ipKey(auth.RemoteIP(r.RemoteAddr)); ok {
		return key
	}
	return r.RemoteAddr
}

// ipKey is what per-IP limits count for an address: an IPv4 address
// (IPv4-mapped IPv6 unmapped), or an IPv6 address's /64, since one host
// usually holds a whole /64 and could otherwise rotate through it.
func ipKey(s string) (string, bool) {
	addr, err := netip.ParseAddr(s)
	if err != nil {
		return "", false
	}
	addr = addr.Unmap().WithZone("")
	if addr.Is4() {
		return addr.String(), true
	}
	return netip.PrefixFrom(addr, 64).Masked().String(), true
}

// authenticate decides who a handshake is: a dev-mode ?user=, the
// configured Authenticator, or anonymous when allowed.
func (e *Edge) authenticate(r *http.Request) (*auth.Identity, error) {
	if e.cfg.Auth.DevMode {
		// INSECURE: dev mode only. Anyone can claim any user id.
		if user := r.URL.Query().Get(e.cfg.Auth.UserParam); user != "" {
			if err := envelope.ValidateID(user); err != nil {
				return nil, &auth.Error{Kind: auth.ErrUnauthenticated, Reason: "invalid user id", Err: err}
			}
			return &auth.Identity{User: user}, nil
		}
	}
	h := auth.NewHandshake(r, e.cfg.Auth.TokenSources)
	if e.cfg.Auth.Authenticator == nil {
		return &auth.Identity{}, nil // Anonymous: setDefaults guarantees it
	}
	ctx, cancel := context.WithTimeout(r.Context(), e.cfg.Auth.Timeout)
	defer cancel()
	id, err := e.cfg.Auth.Authenticator.Authenticate(ctx, h)
	// Only a refusal for carrying no credentials becomes anonymous; an auth
	// service that refused a cookie or header it knows has decided.
	if err != nil && e.cfg.Auth.Anonymous && errors.Is(err, auth.ErrNoToken) {
		return &auth.Identity{}, nil
	}
	return id, err
}

// refuse counts a refused handshake and answers it with status and a
// short reason.
func (e *Edge) refuse(w http.ResponseWriter, tr transport, why refusal, status int, reason string, retryAfter time.Duration) {
	e.stats.refused.Add(1)
	e.stats.refusedBy[why].Add(1)
	e.stats.transports[tr].refused.Add(1)
	if retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((retryAfter+time.Second-1)/time.Second)))
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="natter"`)
	}
	http.Error(w, reason, status)
}

// authorizeJoin decides a client's $join of room: a grant of its token,
// PublicRooms, membership already, or the JoinAuthorizer.
func (c *conn) authorizeJoin(room string) error {
	id := c.ident.Load()
	if auth.Grants(id.Rooms, room) || auth.Grants(c.e.cfg.Auth.PublicRooms, room) {
		return nil
	}
	c.e.hub.mu.Lock()
	member := c.rooms.has(room)
	c.e.hub.mu.Unlock()
	if member {
		return nil
	}
	if c.e.cfg.Auth.JoinAuthorizer == nil {
		return notGranted(room)
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.e.cfg.Auth.Timeout)
	defer cancel()
	return c.e.cfg.Auth.JoinAuthorizer.AuthorizeJoin(ctx, auth.JoinRequest{Conn: c.id, User: c.user, Room: room, Rooms: id.Rooms})
}

// notGranted refuses a join that no grant or public room allows, on an
// edge without a join authorizer to ask: it names the ways to allow it.
func notGranted(room string) error {
	return &auth.Error{Kind: auth.ErrForbidden, Reason: "no grant allows joining room " + room +
		": add it to the token's rooms claim, to --public-rooms, or run a join authorizer (--join-callout)"}
}

// codeOf maps an auth refusal to an error code.
func codeOf(err error) envelope.Code {
	switch {
	case errors.Is(err, auth.ErrForbidden):
		return envelope.CodePermissionDenied
	case errors.Is(err, auth.ErrUnauthenticated):
		return envelope.CodeUnauthenticated
	default:
		return envelope.CodeUnavailable
	}
}

// refresh handles $auth.refresh: {"token": "..."}. A refused token leaves
// the connection as it was, with its old expiry.
func (c *conn) refresh(cid string, payload json.RawMessage) {
	if c.e.cfg.Auth.Authenticator == nil {
		c.sendError(cid, envelope.CodeUnimplemented, "this edge has no token authentication")
		return
	}
	var p struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(payload, &p); err != nil || p.Token == "" {
		c.sendError(cid, envelope.CodeInvalidArgument, `payload must be {"token": string}`)
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx, c.e.cfg.Auth.Timeout)
	defer cancel()
	id, err := c.e.cfg.Auth.Authenticator.Refresh(ctx, p.Token, c.ident.Load())
	if err != nil {
		c.sendError(cid, codeOf(err), auth.Reason(err))
		return
	}
	c.setIdentity(id)
	b, _ := json.Marshal(map[string]any{"user": id.User, "expiresAt": unixMilli(id.Expires)})
	c.sendEnvelope(&envelope.Envelope{Type: envelope.TypeAuthRefreshed, Meta: envelope.Meta{CorrelationID: cid}, Payload: b})
}

// setIdentity installs id and schedules $auth.expiring RefreshWindow before
// its expiry and the close with 4100 at it.
func (c *conn) setIdentity(id *auth.Identity) {
	c.ident.Store(id)
	c.authMu.Lock()
	defer c.authMu.Unlock()
	if c.authTimer != nil {
		c.authTimer.Stop()
		c.authTimer = nil
	}
	if id.Expires.IsZero() || c.isClosed() {
		return
	}
	warnAt := id.Expires.Add(-c.e.cfg.Auth.RefreshWindow)
	c.authTimer = time.AfterFunc(time.Until(warnAt), func() { c.expiring(id, false) })
}

// expiring warns the client of id's expiry, then, called again at it,
// closes the connection unless a refresh replaced id.
func (c *conn) expiring(id *auth.Identity, warned bool) {
	c.authMu.Lock()
	defer c.authMu.Unlock()
	if c.ident.Load() != id || c.isClosed() {
		return // refreshed meanwhile, or closed
	}
	if left := time.Until(id.Expires); left > 0 && !warned {
		b, _ := json.Marshal(map[string]int64{"expiresAt": id.Expires.UnixMilli()})
		c.sendEnvelope(&envelope.Envelope{Type: envelope.TypeAuthExpiring, Payload: b})
		c.authTimer = time.AfterFunc(left, func() { c.expiring(id, true) })
		return
	}
	c.closeWith(envelope.CloseUnauthorized, "token expired", false)
}

// stopAuth ends the expiry timer for good, once the connection is closed:
// setIdentity and expiring check the phase under authMu, so none sets
// another after it.
func (c *conn) stopAuth() {
	c.authMu.Lock()
	if c.authTimer != nil {
		c.authTimer.Stop()
	}
	c.authMu.Unlock()
}

func unixMilli(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}
