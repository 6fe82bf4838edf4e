package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/lestrrat-go/httprc/v3"
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
// keys, and what a JWKS key declares (or its type implies). Tokens signed
// with "none" or with an algorithm of another key type are refused.
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
	static []jwt.ParseOption
	cache  *jwk.Cache
	cancel context.CancelFunc

	mu          sync.Mutex
	lastRefresh time.Time
}

// NewJWT builds a verifier; with a JWKS URL it fetches the set first, within
// ctx.
func NewJWT(ctx context.Context, cfg JWTConfig) (*JWT, error) {
	if cfg.UserClaim == "" {
		cfg.UserClaim = "sub"
	}
	if cfg.RoomsClaim == "" {
		cfg.RoomsClaim = "rooms"
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = 5 * time.Second
	}
	if cfg.JWKSRefresh == 0 {
		cfg.JWKSRefresh = 15 * time.Minute
	}
	if cfg.JWKSMinRefresh == 0 {
		cfg.JWKSMinRefresh = 10 * time.Second
	}
	v := &JWT{cfg: cfg}
	if len(cfg.HMACSecret) > 0 {
		if len(cfg.HMACSecret) < 32 {
			return nil, refuse(ErrInvalidConfig, "HS256 secret shorter than 32 bytes", nil)
		}
		v.static = append(v.static, jwt.WithKey(jwa.HS256(), cfg.HMACSecret))
	}
	for _, k := range cfg.PublicKeys {
		alg, err := algorithmOf(k)
		if err != nil {
			return nil, err
		}
		v.static = append(v.static, jwt.WithKey(alg, k))
	}
	if cfg.JWKSURL != "" {
		cctx, cancel := context.WithCancel(context.Background())
		cache, err := jwk.NewCache(cctx, httprc.NewClient())
		if err != nil {
			cancel()
			return nil, fmt.Errorf("auth: jwks cache: %w", err)
		}
		opts := []jwk.RegisterOption{jwk.WithMinInterval(cfg.JWKSRefresh), jwk.WithMaxInterval(cfg.JWKSRefresh)}
		if cfg.HTTPClient != nil {
			opts = append(opts, jwk.WithHTTPClient(cfg.HTTPClient))
		}
		if err := cache.Register(ctx, cfg.JWKSURL, opts...); err != nil {
			cancel()
			return nil, fmt.Errorf("auth: fetch JWKS %s: %w", cfg.JWKSURL, err)
		}
		v.cache, v.cancel = cache, cancel
		v.lastRefresh = time.Now()
	}
	if len(v.static) == 0 && v.cache == nil {
		return nil, refuse(ErrInvalidConfig, "JWT needs a secret, public keys or a JWKS URL", nil)
	}
	return v, nil
}

// Close stops the JWKS refresher.
func (v *JWT) Close() {
	if v.cancel != nil {
		v.cancel()
	}
}

// Authenticate verifies the handshake's token.
func (v *JWT) Authenticate(ctx context.Context, h *Handshake) (*Identity, error) {
	if h.Token == "" {
		return nil, refuse(ErrUnauthenticated, "missing token", nil)
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
// Identity. Refusals are ErrUnauthenticated.
func (v *JWT) Verify(ctx context.Context, token string) (*Identity, error) {
	if len(token) > MaxTokenSize {
		return nil, refuse(ErrUnauthenticated, "invalid token", errors.New("token too long"))
	}
	opts := append([]jwt.ParseOption{
		jwt.WithValidate(true),
		jwt.WithAcceptableSkew(v.cfg.Leeway),
		jwt.WithRequiredClaim("exp"),
	}, v.static...)
	if v.cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(v.cfg.Issuer))
	}
	if v.cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(v.cfg.Audience))
	}
	if v.cache != nil {
		set, err := v.keySet(ctx, token)
		if err != nil {
			return nil, refuse(ErrUnavailable, "key set unavailable", err)
		}
		opts = append(opts, jwt.WithKeySet(set, jws.WithInferAlgorithmFromKey(true), jws.WithRequireKid(false)))
	}
	tok, err := jwt.ParseString(token, opts...)
	switch {
	case errors.Is(err, jwt.TokenExpiredError()):
		return nil, refuse(ErrUnauthenticated, "token expired", err)
	case errors.Is(err, jwt.ClaimNotFoundError()):
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

// keySet returns the cached JWKS, refreshed first when the token names a key
// id the set lacks and the last refresh is older than JWKSMinRefresh.
func (v *JWT) keySet(ctx context.Context, token string) (jwk.Set, error) {
	set, err := v.cache.Lookup(ctx, v.cfg.JWKSURL)
	if err != nil {
		return nil, err
	}
	msg, err := jws.ParseString(token)
	if err != nil || len(msg.Signatures()) != 1 {
		return set, nil // verification refuses it
	}
	kid, ok := msg.Signatures()[0].ProtectedHeaders().KeyID()
	if !ok {
		return set, nil
	}
	if _, found := set.LookupKeyID(kid); found {
		return set, nil
	}
	v.mu.Lock()
	due := time.Since(v.lastRefresh) >= v.cfg.JWKSMinRefresh
	if due {
		v.lastRefresh = time.Now()
	}
	v.mu.Unlock()
	if !due {
		return set, nil
	}
	if fresh, err := v.cache.Refresh(ctx, v.cfg.JWKSURL); err == nil {
		return fresh, nil
	}
	return set, nil
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
