package edge

import (
	"bufio"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"

	"github.com/lxzan/gws"

	"github.com/natter/natter/internal/auth"
	"github.com/natter/natter/pkg/wire"
)

// The handshake is checked here, against RFC 6455 section 4.2.1, before
// gws sees it, so that every refusal has the right status and the edge's
// own words: gws accepts any Sec-WebSocket-Key and answers everything else
// with "400 gws: ...".

// refusal is why a handshake was refused: the closed set behind the
// reason label of natter_edge_handshakes_refused_total.
type refusal int

const (
	refusedBadRequest      refusal = iota // not a valid WebSocket handshake (400, 405, 426)
	refusedRate                           // handshakes per IP (429)
	refusedOrigin                         // Origin not allowed (403)
	refusedUnauthenticated                // no or bad credentials (401)
	refusedForbidden                      // credentials valid, access refused (403)
	refusedAuthUnavailable                // the auth service did not answer (503)
	refusedLimit                          // connections per user or IP (429)
	refusedDraining                       // the edge is shutting down (503)
	numRefusals
)

var refusalNames = [numRefusals]string{
	refusedBadRequest:      "bad_handshake",
	refusedRate:            "handshake_rate",
	refusedOrigin:          "origin",
	refusedUnauthenticated: "unauthenticated",
	refusedForbidden:       "forbidden",
	refusedAuthUnavailable: "auth_unavailable",
	refusedLimit:           "connection_limit",
	refusedDraining:        "draining",
}

// authRefusal classifies an authentication error by its status.
func authRefusal(err error) refusal {
	switch auth.Status(err) {
	case http.StatusUnauthorized:
		return refusedUnauthenticated
	case http.StatusServiceUnavailable:
		return refusedAuthUnavailable
	}
	return refusedForbidden
}

// handshakeError is a handshake that is not a valid WebSocket opening.
type handshakeError struct {
	status int
	reason string
}

// checkHandshake applies RFC 6455 section 4.2.1 to r, and the subprotocol
// rule of docs/protocol.md: a client that offers subprotocols must offer
// "natter" or "natter.protobuf" among them.
func checkHandshake(r *http.Request) *handshakeError {
	bad := func(reason string) *handshakeError { return &handshakeError{http.StatusBadRequest, reason} }
	switch {
	case !r.ProtoAtLeast(1, 1):
		return bad("WebSocket needs HTTP/1.1")
	case r.Method != http.MethodGet:
		return &handshakeError{http.StatusMethodNotAllowed, "WebSocket handshakes are GET requests"}
	case !headerHasToken(r.Header, "Upgrade", "websocket"):
		return bad("not a WebSocket handshake: Upgrade: websocket missing")
	case !headerHasToken(r.Header, "Connection", "upgrade"):
		return bad("not a WebSocket handshake: Connection: Upgrade missing")
	}
	switch v := r.Header.Values("Sec-WebSocket-Version"); {
	case len(v) == 0:
		return bad("Sec-WebSocket-Version missing; this edge speaks 13")
	case len(v) > 1 || strings.TrimSpace(v[0]) != "13":
		return &handshakeError{http.StatusUpgradeRequired, "unsupported WebSocket version; this edge speaks 13"}
	}
	keys := r.Header.Values("Sec-WebSocket-Key")
	if len(keys) != 1 || !validKey(keys[0]) {
		return bad("Sec-WebSocket-Key must be one header of 16 bytes in base64")
	}
	if protocols := r.Header.Values("Sec-WebSocket-Protocol"); offered(protocols) && chosenProtocol(protocols) == "" {
		return bad(`subprotocols offered without "natter" or "natter.protobuf"; offer one (and bearer.<token> if the token travels there)`)
	}
	return nil
}

// validKey reports whether key is 16 bytes in base64: 24 characters.
func validKey(key string) bool {
	key = strings.TrimSpace(key)
	if len(key) != 24 {
		return false
	}
	b, err := base64.StdEncoding.DecodeString(key)
	return err == nil && len(b) == 16
}

// headerHasToken reports whether a comma-separated header of h lists
// token, case-insensitively.
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// offered reports whether values list any subprotocol: an empty header
// offers none.
func offered(values []string) bool {
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if strings.TrimSpace(t) != "" {
				return true
			}
		}
	}
	return false
}

// upgrade takes the connection over from net/http and has gws answer the
// handshake on a wireConn. The bytes the client sent after its request
// (a first frame in the same segment) stay in front of the socket's.
func (e *Edge) upgrade(w http.ResponseWriter, r *http.Request) (*gws.Conn, *wireConn, bool, error) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		return nil, nil, false, errors.New("edge: the response writer cannot hijack")
	}
	nc, rw, err := hj.Hijack()
	if err != nil {
		return nil, nil, false, err
	}
	var pre []byte
	if n := rw.Reader.Buffered(); n > 0 {
		b, _ := rw.Reader.Peek(n)
		pre = append([]byte(nil), b...)
	}
	// As gws decides it (Upgrader.getPermessageDeflate).
	deflate := e.cfg.WebSocket.Compression && strings.Contains(r.Header.Get("Sec-WebSocket-Extensions"), "permessage-deflate")
	wc := newWireConn(nc, pre, e.cfg.WebSocket.MaxMessageSize, deflate, min(closeLinger, e.cfg.WebSocket.WriteTimeout), e.gaveUp.Done())
	// gws reads only the first value of each header: give it the values
	// checkHandshake accepted, however the client spread or listed them.
	r.Header.Set("Upgrade", "websocket")
	r.Header.Set("Connection", "Upgrade")
	up := e.upgrader
	chosen := chosenProtocol(r.Header.Values("Sec-WebSocket-Protocol"))
	switch chosen {
	case "":
		r.Header.Del("Sec-WebSocket-Protocol")
	case wire.Protobuf:
		up = e.upgraderBinary
	default:
		up = e.upgraderProto // selects "natter"; a bearer.<token> entry is never echoed
	}
	if chosen != "" {
		r.Header.Set("Sec-WebSocket-Protocol", chosen)
	}
	socket, err := up.UpgradeFromConn(wc, bufio.NewReaderSize(wc, e.cfg.WebSocket.ReadBufferSize), r)
	if err != nil {
		wc.abort()
		return nil, nil, false, err
	}
	return socket, wc, chosen == wire.Protobuf, nil
}

// chosenProtocol is the subprotocol the edge selects from those offered:
// the first of "natter" and "natter.protobuf" the client lists, or none
// when it offers none (checkHandshake refused an offer without either).
func chosenProtocol(values []string) string {
	for _, v := range values {
		for t := range strings.SplitSeq(v, ",") {
			if t = strings.TrimSpace(t); t == wire.JSON || t == wire.Protobuf {
				return t
			}
		}
	}
	return ""
}
