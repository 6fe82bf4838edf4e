package auth_test

import (
	"context"
	"crypto"
	"testing"

	"github.com/lestrrat-go/jwx/v3/jwa"

	"github.com/natter/natter/internal/auth"
)

// BenchmarkVerify is the cost of checking one handshake's token, per
// algorithm: the part of a handshake that JWT auth adds.
func BenchmarkVerify(b *testing.B) {
	k := keys()
	for _, tc := range []struct {
		name string
		alg  jwa.SignatureAlgorithm
		sign any
		cfg  auth.JWTConfig
	}{
		{"HS256", jwa.HS256(), k.hs, auth.JWTConfig{HMACSecret: k.hs}},
		{"RS256", jwa.RS256(), k.rsa, auth.JWTConfig{PublicKeys: []crypto.PublicKey{&k.rsa.PublicKey}}},
		{"ES256", jwa.ES256(), k.ec, auth.JWTConfig{PublicKeys: []crypto.PublicKey{&k.ec.PublicKey}}},
		{"EdDSA", jwa.EdDSA(), k.ed, auth.JWTConfig{PublicKeys: []crypto.PublicKey{k.ed.Public()}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			v, err := auth.NewJWT(context.Background(), tc.cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer v.Close()
			tok := sign(b, tc.alg, tc.sign, "", validClaims("alice"))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(context.Background(), tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
