package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/httprc/v3"
	"github.com/lestrrat-go/httprc/v3/errsink"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"

	"github.com/natter/natter/pkg/envelope"
)

// MaxTokenSize bounds a token; longer ones are refused unparsed.
const MaxTokenSize = 8 << 10

// JWTConfig configures JWT verification. At least one key source is
// required. The algorithm follows from the key, never from the token: HS256
// for the secret, RS256 for RSA keys, ES256 for P-256 keys, EdDSA for Ed25519
// keys, and what a JWKS key declares if it fits the key's type (else what
// its type implies, as for configured keys; symmetric JWKS keys are
// ignored). A token is checked only against the keys of the algorithm its
// header names, so tokens whose header says "none", or an algorithm other
// than the one of the key that signed them, are refused.
type JWTConfig struct {
	// HMACSecret verifies HS256 tokens. At least 32 bytes.
	HMACSecret []byte
	// PublicKeys verify RS256 (RSA, at least 2048 bits), ES256 (P-256) and
	// EdDSA (Ed25519) tokens.
	PublicKeys []crypto.PublicKey
	// JWKSURL is a JSON Web Key Set, fetched at start, refreshed every
	// JWKSRefresh, and at once (at most every JWKSMinRefresh) when a token
	// names a key id it does not hold: key rotation without restarts.
	JWKSURL string
	// JWKSRefresh is the regular refresh interval. Default 15m.
	JWKSRefresh time.Duration
	// JWKSMinRefresh bounds the refreshes triggered by unknown key ids.
	// Default 10s.
	JWKSMinRefresh time.Duration
	// HTTPClient fetches the JWKS. Default: jwx's client with timeouts.
	HTTPClient *http.Client
	// Issuer and Audience, when set, must match the iss and aud claims.
	Issuer, Audience string
	// UserClaim holds the user id. Default "sub".
	UserClaim string
	// RoomsClaim holds the room patterns the token grants (an array of
	// strings; see Grants). Default "rooms".
	RoomsClaim string
	// Leeway is the clock skew allowed on exp, nbf and iat. Default 5s.
	Leeway time.Duration
}

// JWT verifies JSON Web Tokens. It is an Authenticator.
type JWT struct {
	cfg    JWTConfig
	static []verifyKey
	cache  *jwk.Cache

	mu          sync.Mutex
	lastRefresh time.Time     // last fetch of the JWKS caused by an unknown key id
	refreshing  chan struct{} // closed when the fetch in flight ends; nil if none
	refreshErr  error         // how the last such fetch failed; nil if it did not
	set         jwk.Set       // the JWKS that keys were taken from
	keys        []verifyKey   // the usable keys of set
}

// verifyKey is a key and the one algorithm it verifies; kid is that of a
// JWKS key, "" for configured keys.
type verifyKey struct {
	kid string
	alg jwa.SignatureAlgorithm
	key any
}

// DefaultJWTConfig holds the defaults NewJWT gives the zero fields it
// reads (claims, leeway, JWKS refresh periods), for callers that show or
// start from them, such as the edge command's flags.
func DefaultJWTConfig() JWTConfig {
	return JWTConfig{UserClaim: "sub", RoomsClaim: "rooms", Leeway: 5 * time.Second, JWKSRefresh: 15 * time.Minute, JWKSMinRefresh: 10 * time.Second}
}

// NewJWT builds a verifier; with a JWKS URL it fetches the set first, within
// ctx, and fails with the fetch's error if that does not work.
func NewJWT(ctx context.Context, cfg JWTConfig) (*JWT, error) {
	def := DefaultJWTConfig()
	if cfg.UserClaim == "" {
		cfg.UserClaim = def.UserClaim
	}
	if cfg.RoomsClaim == "" {
		cfg.RoomsClaim = def.RoomsClaim
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = def.Leeway
	}
	if cfg.JWKSRefresh == 0 {
		cfg.JWKSRefresh = def.JWKSRefresh
	}
	if cfg.JWKSMinRefresh == 0 {
		cfg.JWKSMinRefresh = def.JWKSMinRefresh
	}
	v := &JWT{cfg: cfg}
	if len(cfg.HMACSecret) > 0 {
		if len(cfg.HMACSecret) < 32 {
			return nil, refuse(ErrInvalidConfig, "HS256 secret shorter than 32 bytes", nil)
		}
		v.static = append(v.static, verifyKey{alg: jwa.HS256(), key: cfg.HMACSecret})
	}
	for _, k := range cfg.PublicKeys {
		alg, err := algorithmOf(k)
		if err != nil {
			return nil, err
		}
		v.static = append(v.static, verifyKey{alg: alg, key: k})
	}
	if cfg.JWKSURL != "" {
		// The cache fetches the set in its own goroutines, which live until
		// Close, not until ctx ends. Registering waits for the first fetch;
		// a failed one ends the wait at once with its error, rather than
		// when ctx ends (the cache tries again only after JWKSRefresh).
		start, stop := context.WithCancelCause(ctx)
		defer stop(nil)
		failed := errsink.NewFunc(func(_ context.Context, err error) { stop(err) })
		cache, err := jwk.NewCache(context.Background(), httprc.NewClient(httprc.WithErrorSink(failed)))
		if err != nil {
			return nil, fmt.Errorf("auth: jwks cache: %w", err)
		}
		opts := []jwk.RegisterOption{jwk.WithMinInterval(cfg.JWKSRefresh), jwk.WithMaxInterval(cfg.JWKSRefresh)}
		if cfg.HTTPClient != nil {
			opts = append(opts, jwk.WithHTTPClient(cfg.HTTPClient))
		}
		if err := cache.Register(start, cfg.JWKSURL, opts...); err != nil {
			_ = cache.Shutdown(context.Background())
			if cause := context.Cause(start); cause != nil && ctx.Err() == nil {
				err = cause
			}
			return nil, fmt.Errorf("auth: fetch JWKS %s: %w", cfg.JWKSURL, err)
		}
		v.cache = cache
		v.lastRefresh = time.Now()
	}
	if len(v.static) == 0 && v.cache == nil {
		return nil, refuse(ErrInvalidConfig, "JWT needs a secret, public keys or a JWKS URL", nil)
	}
	return v, nil
}

// Close stops the JWKS refresher and waits for its goroutines to end.
func (v *JWT) Close() {
	if v.cache != nil {
		_ = v.cache.Shutdown(context.Background())
	}
}

// Authenticate verifies the handshake's token.
func (v *JWT) Authenticate(ctx context.Context, h *Handshake) (*Identity, error) {
	if h.Token == "" {
		return nil, refuse(ErrUnauthenticated, "missing token", ErrNoToken)
	}
	return v.Verify(ctx, h.Token)
}

// Refresh verifies a new token for a live connection of cur.
func (v *JWT) Refresh(ctx context.Context, token string, cur *Identity) (*Identity, error) {
	id, err := v.Verify(ctx, token)
	if err != nil {
		return nil, err
	}
	if id.User != cur.User {
		return nil, refuse(ErrForbidden, "token is for another user", nil)
	}
	return id, nil
}

// Verify checks a token's signature and claims and maps them to an
// Identity. Only compact tokens are accepted, and only keys whose algorithm
// is the one the token's header names are tried; a token that names a key
// id is checked against the JWKS key of that id only (configured keys have
// no id and are always tried). Refusals are ErrUnauthenticated, except
// ErrUnavailable when the token names a key id the cached JWKS lacks, the
// set cannot be fetched, and no configured key verifies the token.
func (v *JWT) Verify(ctx context.Context, token string) (*Identity, error) {
	if len(token) > MaxTokenSize {
		return nil, refuse(ErrUnauthenticated, "invalid token", errors.New("token too long"))
	}
	if !isCompact(token) {
		return nil, refuse(ErrUnauthenticated, "invalid token", errors.New("not three unpadded base64url segments"))
	}
	msg, err := jws.Parse([]byte(token), jws.WithCompact())
	if err != nil {
		return nil, refuse(ErrUnauthenticated, "invalid token", err)
	}
	if len(msg.Signatures()) != 1 {
		return nil, refuse(ErrUnauthenticated, "invalid token", errors.New("not one signature"))
	}
	hdr := msg.Signatures()[0].ProtectedHeaders()
	alg, ok := hdr.Algorithm()
	if !ok {
		return nil, refuse(ErrUnauthenticated, "invalid token", errors.New("no alg in the header"))
	}
	kid, hasKid := hdr.KeyID()
	candidates := make([]verifyKey, 0, len(v.static)+1)
	for _, k := range v.static {
		if k.alg == alg {
			candidates = append(candidates, k)
		}
	}
	// The JWKS holds only public keys (see fits): an HS256 or "none" token
	// never needs it, and never makes it fetched. If it cannot be fetched,
	// configured keys may still verify the token.
	var jwksErr error
	if v.cache != nil && slices.Contains(publicAlgs, alg) {
		keys, err := v.jwksKeys(ctx, kid, hasKid)
		jwksErr = err
		for _, k := range keys {
			if k.alg == alg && (!hasKid || k.kid == kid) {
				candidates = append(candidates, k)
			}
		}
	}
	if len(candidates) == 0 {
		if jwksErr != nil {
			return nil, refuse(ErrUnavailable, "key set unavailable", jwksErr)
		}
		return nil, refuse(ErrUnauthenticated, "invalid token", fmt.Errorf("no key for alg %s", alg))
	}
	// The key provider offers the candidates with the header's algorithm:
	// jws would otherwise verify with each key's own algorithm, whatever
	// the header says. Unknown "crit" extensions are refused (RFC 7515
	// 4.1.11).
	provider := jws.KeyProviderFunc(func(_ context.Context, sink jws.KeySink, _ *jws.Signature, _ *jws.Message) error {
		for _, k := range candidates {
			sink.Key(k.alg, k.key)
		}
		return nil
	})
	payload, err := jws.Verify([]byte(token), jws.WithCompact(), jws.WithKeyProvider(provider),
		jws.WithCritValidation(true), jws.WithContext(ctx))
	if err != nil {
		if jwksErr != nil {
			return nil, refuse(ErrUnavailable, "key set unavailable", errors.Join(jwksErr, err))
		}
		return nil, refuse(ErrUnauthenticated, "invalid token", err)
	}
	// The payload becomes claims as JSON, never through jwt.Parse, which
	// would take a JWS-shaped payload for a nested token and read its
	// claims without checking its signature.
	tok := jwt.New()
	if err := json.Unmarshal(payload, tok); err != nil {
		return nil, refuse(ErrUnauthenticated, "invalid token", err)
	}
	opts := []jwt.ValidateOption{
		jwt.WithAcceptableSkew(v.cfg.Leeway),
		jwt.WithRequiredClaim("exp"),
	}
	if v.cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(v.cfg.Issuer))
	}
	if v.cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(v.cfg.Audience))
	}
	err = jwt.Validate(tok, opts...)
	switch {
	case errors.Is(err, jwt.TokenExpiredError()):
		return nil, refuse(ErrUnauthenticated, "token expired", err)
	case errors.Is(err, jwt.MissingRequiredClaimError()), errors.Is(err, jwt.ClaimNotFoundError()):
		return nil, refuse(ErrUnauthenticated, "token lacks a required claim", err)
	case err != nil:
		return nil, refuse(ErrUnauthenticated, "invalid token", err)
	}
	id := &Identity{}
	id.Expires, _ = tok.Expiration()
	if err := tok.Get(v.cfg.UserClaim, &id.User); err != nil {
		return nil, refuse(ErrUnauthenticated, "token lacks a required claim", err)
	}
	if err := envelope.ValidateID(id.User); err != nil {
		return nil, refuse(ErrUnauthenticated, "invalid user id in token", err)
	}
	if tok.Has(v.cfg.RoomsClaim) {
		var rooms []any
		if err := tok.Get(v.cfg.RoomsClaim, &rooms); err != nil {
			return nil, refuse(ErrUnauthenticated, "invalid rooms claim", err)
		}
		for _, r := range rooms {
			s, ok := r.(string)
			if !ok {
				return nil, refuse(ErrUnauthenticated, "invalid rooms claim", nil)
			}
			id.Rooms = append(id.Rooms, s)
		}
		if err := ValidatePatterns(id.Rooms); err != nil {
			return nil, refuse(ErrUnauthenticated, "invalid rooms claim", err)
		}
	}
	return id, nil
}

// strictBase64URL decodes what RFC 7515 calls base64url: no padding, and
// the unused bits of the last character zero.
var strictBase64URL = base64.RawURLEncoding.Strict()

// isCompact reports whether token is a compact JWS in the one encoding
// RFC 7515 allows: three base64url segments without padding, line breaks
// or other characters. jws alone also takes padded, standard-alphabet and
// non-zero-trailing-bit segments, so that one signed token would have many
// spellings.
func isCompact(token string) bool {
	n := 0
	for seg := range strings.SplitSeq(token, ".") {
		n++
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
		if _, err := strictBase64URL.DecodeString(seg); err != nil {
			return false
		}
	}
	return n == 3
}

// jwksKeys returns the usable keys of the cached JWKS. When the token names
// a key id the set lacks, the set is fetched again first, at most every
// JWKSMinRefresh; concurrent callers wait for the fetch in flight. If that
// fetch fails, an error is returned (and returned again to unknown key ids
// until the next fetch), because the key may well exist: the caller cannot
// tell a forged key id from a rotation it could not see.
func (v *JWT) jwksKeys(ctx context.Context, kid string, hasKid bool) ([]verifyKey, error) {
	keys, err := v.cachedKeys(ctx)
	if err != nil || !hasKid || holds(keys, kid) {
		return keys, err
	}
	v.mu.Lock()
	wait := v.refreshing
	due := wait == nil && time.Since(v.lastRefresh) >= v.cfg.JWKSMinRefresh
	if due {
		v.lastRefresh = time.Now()
		v.refreshing = make(chan struct{})
	}
	v.mu.Unlock()
	switch {
	case due:
		// The fetch serves every waiter: it must not end with the
		// handshake that started it.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		_, err := v.cache.Refresh(fctx, v.cfg.JWKSURL)
		cancel()
		v.mu.Lock()
		close(v.refreshing)
		v.refreshing = nil
		v.refreshErr = err
		v.mu.Unlock()
		if err != nil {
			return nil, err
		}
	case wait != nil:
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	v.mu.Lock()
	err = v.refreshErr
	v.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return v.cachedKeys(ctx)
}

// cachedKeys returns the usable keys of the cached JWKS, converted once per
// fetched set.
func (v *JWT) cachedKeys(ctx context.Context) ([]verifyKey, error) {
	set, err := v.cache.Lookup(ctx, v.cfg.JWKSURL)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.set != set {
		v.set, v.keys = set, usableKeys(set)
	}
	return v.keys, nil
}

func holds(keys []verifyKey, kid string) bool {
	for _, k := range keys {
		if k.kid == kid {
			return true
		}
	}
	return false
}

// usableKeys are the keys of set that verify signatures, each with the one
// algorithm it verifies: the one it declares if that fits its type, or else
// the one its type implies (see algorithmOf). Symmetric keys, private keys
// and keys of other types or sizes are left out.
func usableKeys(set jwk.Set) []verifyKey {
	var keys []verifyKey
	for i := range set.Len() {
		k, _ := set.Key(i)
		if use, ok := k.KeyUsage(); ok && use != "" && use != jwk.ForSignature.String() {
			continue
		}
		var raw any
		if err := jwk.Export(k, &raw); err != nil {
			continue
		}
		alg, err := algorithmOf(raw)
		if declared, ok := k.Algorithm(); ok {
			alg, ok = jwa.LookupSignatureAlgorithm(declared.String())
			if !ok || !fits(alg, raw) {
				continue
			}
		} else if err != nil {
			continue
		}
		kid, _ := k.KeyID()
		keys = append(keys, verifyKey{kid: kid, alg: alg, key: raw})
	}
	return keys
}

// rsaAlgs are the algorithms a JWKS RSA key may declare.
var rsaAlgs = []jwa.SignatureAlgorithm{jwa.RS256(), jwa.RS384(), jwa.RS512(), jwa.PS256(), jwa.PS384(), jwa.PS512()}

// publicAlgs are the algorithms a JWKS key may verify (see fits).
var publicAlgs = append(slices.Clone(rsaAlgs), jwa.ES256(), jwa.ES384(), jwa.ES512(), jwa.EdDSA())

// fits reports whether a JWKS key may verify alg: RSA keys of at least 2048
// bits RS256-512 and PS256-512, ECDSA keys the ES algorithm of their curve,
// Ed25519 keys EdDSA.
func fits(alg jwa.SignatureAlgorithm, key any) bool {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return k.N.BitLen() >= 2048 && slices.Contains(rsaAlgs, alg)
	case *ecdsa.PublicKey:
		return alg == jwa.ES256() && k.Curve == elliptic.P256() ||
			alg == jwa.ES384() && k.Curve == elliptic.P384() ||
			alg == jwa.ES512() && k.Curve == elliptic.P521()
	case ed25519.PublicKey:
		return alg == jwa.EdDSA()
	}
	return false
}

// algorithmOf is the one algorithm a static public key verifies.
func algorithmOf(k crypto.PublicKey) (jwa.SignatureAlgorithm, error) {
	switch k := k.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return jwa.SignatureAlgorithm{}, refuse(ErrInvalidConfig, "RSA key shorter than 2048 bits", nil)
		}
		return jwa.RS256(), nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return jwa.SignatureAlgorithm{}, refuse(ErrInvalidConfig, "ECDSA key is not P-256 (ES256)", nil)
		}
		return jwa.ES256(), nil
	case ed25519.PublicKey:
		return jwa.EdDSA(), nil
	default:
		return jwa.SignatureAlgorithm{}, refuse(ErrInvalidConfig, fmt.Sprintf("unsupported public key %T", k), nil)
	}
}

// LoadPublicKeys reads the PEM "PUBLIC KEY" blocks (PKIX: RSA, P-256 or
// Ed25519) of a file.
func LoadPublicKeys(file string) ([]crypto.PublicKey, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var keys []crypto.PublicKey
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "PUBLIC KEY" {
			continue
		}
		k, err := x509.ParsePKIXPublicKey(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalidConfig, file, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: %s holds no PEM PUBLIC KEY", ErrInvalidConfig, file)
	}
	return keys, nil
}
