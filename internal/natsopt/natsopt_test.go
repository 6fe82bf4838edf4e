package natsopt_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"flag"
	"io/fs"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/natsopt"
)

// applied is what a set of options does to nats.go's options, reduced to
// what the tests compare.
type applied struct {
	User, Password, Token string
	NKey, JWT             bool
	Secure                bool
	ServerName            string
	RootCAs, ClientCert   bool
}

func apply(t *testing.T, opts []nats.Option) applied {
	t.Helper()
	o := nats.GetDefaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			t.Fatalf("option: %v", err)
		}
	}
	a := applied{
		User: o.User, Password: o.Password, Token: o.Token,
		NKey: o.Nkey != "", JWT: o.UserJWT != nil,
		Secure: o.Secure, RootCAs: o.RootCAsCB != nil, ClientCert: o.TLSCertCB != nil,
	}
	if o.TLSConfig != nil {
		if o.TLSConfig.MinVersion < tls.VersionTLS12 {
			t.Errorf("TLS MinVersion %#x below TLS 1.2", o.TLSConfig.MinVersion)
		}
		a.ServerName = o.TLSConfig.ServerName
	}
	return a
}

func TestNATS(t *testing.T) {
	dir := t.TempDir()
	p := newPKI(t)
	seed, _ := userSeed(t, dir, "user.nk")
	creds := newOperator(t).creds(t, dir, "worker")
	garbage := write(t, dir, "garbage", []byte("not a key, not a certificate\n"))
	missing := dir + "/missing"

	for _, tc := range []struct {
		name     string
		o        natsopt.Options
		password string // NATTER_NATS_PASSWORD
		token    string // NATTER_NATS_TOKEN
		want     applied
		wantErr  error // besides ErrInvalidOptions
		errHas   string
	}{
		{name: "zero"},
		{name: "creds", o: natsopt.Options{Creds: creds}, want: applied{JWT: true}},
		{name: "nkey", o: natsopt.Options{NKeySeedFile: seed}, want: applied{NKey: true}},
		{name: "user and password", o: natsopt.Options{User: "edge", Password: "pw"}, want: applied{User: "edge", Password: "pw"}},
		{name: "password from env", o: natsopt.Options{User: "edge"}, password: "envpw", want: applied{User: "edge", Password: "envpw"}},
		{name: "flag password wins over env", o: natsopt.Options{User: "edge", Password: "pw"}, password: "envpw", want: applied{User: "edge", Password: "pw"}},
		{name: "token", o: natsopt.Options{Token: "tok"}, want: applied{Token: "tok"}},
		{name: "token from env", token: "envtok", want: applied{Token: "envtok"}},
		{name: "tls ca", o: natsopt.Options{TLSCA: p.CA}, want: applied{Secure: true, RootCAs: true}},
		{name: "tls client cert", o: natsopt.Options{TLSCert: p.ClientCert, TLSKey: p.ClientKey}, want: applied{Secure: true, ClientCert: true}},
		{name: "tls server name", o: natsopt.Options{TLSServerName: "natter-nats"}, want: applied{Secure: true, ServerName: "natter-nats"}},
		{
			name: "creds with mutual tls",
			o:    natsopt.Options{Creds: creds, TLSCA: p.CA, TLSCert: p.ClientCert, TLSKey: p.ClientKey, TLSServerName: "natter-nats"},
			want: applied{JWT: true, Secure: true, RootCAs: true, ClientCert: true, ServerName: "natter-nats"},
		},

		{name: "creds and nkey", o: natsopt.Options{Creds: creds, NKeySeedFile: seed}, errHas: "--nats-creds and --nats-nkey"},
		{name: "nkey and user", o: natsopt.Options{NKeySeedFile: seed, User: "edge", Password: "pw"}, errHas: "--nats-nkey and --nats-user"},
		{name: "user and token", o: natsopt.Options{User: "edge", Password: "pw", Token: "tok"}, errHas: "exclude each other"},
		{name: "creds and env token", o: natsopt.Options{Creds: creds}, token: "envtok", errHas: "$NATTER_NATS_TOKEN"},
		{name: "user without password", o: natsopt.Options{User: "edge"}, errHas: "needs --nats-password"},
		{name: "password without user", o: natsopt.Options{Password: "pw"}, errHas: "--nats-password needs --nats-user"},
		{name: "env password without user", password: "envpw", errHas: "$NATTER_NATS_PASSWORD needs --nats-user"},
		{name: "cert without key", o: natsopt.Options{TLSCert: p.ClientCert}, errHas: "--nats-tls-cert needs --nats-tls-key"},
		{name: "key without cert", o: natsopt.Options{TLSKey: p.ClientKey}, errHas: "--nats-tls-key needs --nats-tls-cert"},
		{name: "missing creds", o: natsopt.Options{Creds: missing}, wantErr: fs.ErrNotExist},
		{name: "malformed creds", o: natsopt.Options{Creds: garbage}, errHas: "--nats-creds"},
		{name: "missing nkey seed", o: natsopt.Options{NKeySeedFile: missing}, wantErr: fs.ErrNotExist},
		{name: "malformed nkey seed", o: natsopt.Options{NKeySeedFile: garbage}, errHas: "--nats-nkey"},
		{name: "missing ca", o: natsopt.Options{TLSCA: missing}, wantErr: fs.ErrNotExist},
		{name: "malformed ca", o: natsopt.Options{TLSCA: garbage}, errHas: "--nats-tls-ca"},
		{name: "missing client key", o: natsopt.Options{TLSCert: p.ClientCert, TLSKey: missing}, wantErr: fs.ErrNotExist},
		{name: "key of another cert", o: natsopt.Options{TLSCert: p.ClientCert, TLSKey: p.ServerKey}, errHas: "--nats-tls-cert"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(natsopt.EnvPassword, tc.password)
			t.Setenv(natsopt.EnvToken, tc.token)
			opts, err := tc.o.NATS()
			if tc.wantErr == nil && tc.errHas == "" {
				if err != nil {
					t.Fatalf("NATS: %v", err)
				}
				if got := apply(t, opts); got != tc.want {
					t.Fatalf("applied\n got %+v\nwant %+v", got, tc.want)
				}
				return
			}
			if !errors.Is(err, natsopt.ErrInvalidOptions) {
				t.Fatalf("err = %v, want ErrInvalidOptions", err)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want it to wrap %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("err = %q, want it to mention %q", err, tc.errHas)
			}
		})
	}
}

func TestRegister(t *testing.T) {
	t.Parallel()
	var o natsopt.Options
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	o.Register(fs)
	err := fs.Parse([]string{
		"--nats-creds", "c.creds", "--nats-nkey", "s.nk", "--nats-user", "u", "--nats-password", "pw",
		"--nats-token", "tok", "--nats-tls-ca", "ca.pem", "--nats-tls-cert", "c.pem", "--nats-tls-key", "k.pem",
		"--nats-tls-server-name", "nats.example",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := natsopt.Options{
		Creds: "c.creds", NKeySeedFile: "s.nk", User: "u", Password: "pw", Token: "tok",
		TLSCA: "ca.pem", TLSCert: "c.pem", TLSKey: "k.pem", TLSServerName: "nats.example",
	}
	if o != want {
		t.Fatalf("parsed %+v\nwant   %+v", o, want)
	}

	// Preset values are the defaults, but secrets never reach the help text.
	o = natsopt.Options{User: "edge", Password: "hunter2", Token: "s3cret"}
	fs = flag.NewFlagSet("test", flag.ContinueOnError)
	var help bytes.Buffer
	fs.SetOutput(&help)
	o.Register(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if o.User != "edge" || o.Password != "hunter2" || o.Token != "s3cret" {
		t.Fatalf("Register lost preset values: %+v", o)
	}
	fs.PrintDefaults()
	for _, s := range []string{"hunter2", "s3cret"} {
		if strings.Contains(help.String(), s) {
			t.Fatalf("help shows a secret:\n%s", help.String())
		}
	}
	for _, s := range []string{"NATTER_NATS_PASSWORD", "NATTER_NATS_TOKEN", `default "edge"`} {
		if !strings.Contains(help.String(), s) {
			t.Fatalf("help does not mention %s:\n%s", s, help.String())
		}
	}
}
