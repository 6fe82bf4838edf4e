package natsopt_test

import (
	"errors"
	"flag"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/natter/natter/internal/natsopt"
	"github.com/natter/natter/internal/testenv"
)

type connectCase struct {
	name     string
	o        natsopt.Options
	password string // NATTER_NATS_PASSWORD
	token    string // NATTER_NATS_TOKEN
	ok       bool
	wantErr  error // on failure, if the error is a known one
}

// runConnect connects to url with each case's options and checks that the
// connection works (a round trip) or is refused.
func runConnect(t *testing.T, url string, cases []connectCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(natsopt.EnvPassword, tc.password)
			t.Setenv(natsopt.EnvToken, tc.token)
			opts, err := tc.o.NATS()
			if err != nil {
				t.Fatalf("NATS: %v", err)
			}
			nc, err := nats.Connect(url, append(opts, nats.Timeout(5*time.Second), nats.NoReconnect())...)
			if !tc.ok {
				if err == nil {
					nc.Close()
					t.Fatal("connected; want refusal")
				}
				t.Logf("refused: %v", err)
				if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			defer nc.Close()
			if err := nc.Flush(); err != nil {
				t.Fatalf("round trip: %v", err)
			}
		})
	}
}

func TestConnectTLS(t *testing.T) {
	p := newPKI(t)
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
		CertFile: p.ServerCert, KeyFile: p.ServerKey, CaFile: p.CA, Verify: true, Timeout: 5,
	})
	if err != nil {
		t.Fatal(err)
	}
	url := testenv.NATSServer(t, &server.Options{TLS: true, TLSVerify: true, TLSConfig: tc, TLSTimeout: 5})
	// As the commands get them: from the flags.
	var mutual natsopt.Options
	fs := flag.NewFlagSet("edge", flag.ContinueOnError)
	mutual.Register(fs)
	if err := fs.Parse([]string{"--nats-tls-ca", p.CA, "--nats-tls-cert", p.ClientCert, "--nats-tls-key", p.ClientKey}); err != nil {
		t.Fatal(err)
	}
	named := mutual
	named.TLSServerName = "natter-nats"
	wrongName := mutual
	wrongName.TLSServerName = "elsewhere"
	runConnect(t, url, []connectCase{
		{name: "ca and client cert", o: mutual, ok: true},
		{name: "server name in the certificate", o: named, ok: true},
		{name: "server name not in the certificate", o: wrongName, wantErr: nats.ErrTLS},
		{name: "no tls options", wantErr: nats.ErrTLS}, // nats.go tries TLS with the system roots
		{name: "ca without client cert", o: natsopt.Options{TLSCA: p.CA}},
		{name: "client cert without ca", o: natsopt.Options{TLSCert: p.ClientCert, TLSKey: p.ClientKey}, wantErr: nats.ErrTLS},
	})
}

func TestConnectUserPassword(t *testing.T) {
	url := testenv.NATSServer(t, &server.Options{Users: []*server.User{{Username: "edge", Password: "s3cret"}}})
	runConnect(t, url, []connectCase{
		{name: "flag", o: natsopt.Options{User: "edge", Password: "s3cret"}, ok: true},
		{name: "env", o: natsopt.Options{User: "edge"}, password: "s3cret", ok: true},
		{name: "wrong password", o: natsopt.Options{User: "edge", Password: "guess"}, wantErr: nats.ErrAuthorization},
		{name: "none", wantErr: nats.ErrAuthorization},
	})
}

func TestConnectToken(t *testing.T) {
	url := testenv.NATSServer(t, &server.Options{Authorization: "t0ken"})
	runConnect(t, url, []connectCase{
		{name: "flag", o: natsopt.Options{Token: "t0ken"}, ok: true},
		{name: "env", token: "t0ken", ok: true},
		{name: "wrong token", o: natsopt.Options{Token: "guess"}, wantErr: nats.ErrAuthorization},
		{name: "none", wantErr: nats.ErrAuthorization},
	})
}

func TestConnectNKey(t *testing.T) {
	dir := t.TempDir()
	seed, pub := userSeed(t, dir, "edge.nk")
	other, _ := userSeed(t, dir, "other.nk")
	url := testenv.NATSServer(t, &server.Options{Nkeys: []*server.NkeyUser{{Nkey: pub}}})
	runConnect(t, url, []connectCase{
		{name: "listed key", o: natsopt.Options{NKeySeedFile: seed}, ok: true},
		{name: "unlisted key", o: natsopt.Options{NKeySeedFile: other}, wantErr: nats.ErrAuthorization},
		{name: "none", wantErr: nats.ErrAuthorization},
	})
}

// TestConnectCreds runs a server in operator mode, trusting one operator
// whose account JWT is in a memory resolver, and connects with the
// credentials file of a user of that account.
func TestConnectCreds(t *testing.T) {
	dir := t.TempDir()
	op := newOperator(t)
	res := &server.MemAccResolver{}
	if err := res.Store(op.Account, op.AccountJWT); err != nil {
		t.Fatal(err)
	}
	url := testenv.NATSServer(t, &server.Options{TrustedOperators: []*jwt.OperatorClaims{op.Claims}, AccountResolver: res})
	stranger := newOperator(t) // its account is unknown to the server
	runConnect(t, url, []connectCase{
		{name: "user of a trusted account", o: natsopt.Options{Creds: op.creds(t, dir, "edge")}, ok: true},
		{name: "user of an unknown account", o: natsopt.Options{Creds: stranger.creds(t, dir, "mallory")}, wantErr: nats.ErrAuthorization},
		{name: "none", wantErr: nats.ErrAuthorization},
	})
}

// With --nats-inbox-prefix, replies come back on the role's own prefix, so
// permissions can allow a role only its own replies.
func TestInboxPrefix(t *testing.T) {
	url := testenv.NATSServer(t, &server.Options{Users: []*server.User{
		{Username: "edge", Password: "pw", Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{"svc"}},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX_EDGE.>"}},
		}},
		{Username: "svc", Password: "pw"},
	}})
	responder, err := nats.Connect(url, nats.UserInfo("svc", "pw"))
	if err != nil {
		t.Fatal(err)
	}
	defer responder.Close()
	if _, err := responder.Subscribe("svc", func(m *nats.Msg) { _ = m.Respond([]byte("ok")) }); err != nil {
		t.Fatal(err)
	}
	_ = responder.Flush()

	for _, tc := range []struct {
		prefix string
		ok     bool
	}{{"_INBOX_EDGE", true}, {"", false}} {
		o := natsopt.Options{User: "edge", Password: "pw", InboxPrefix: tc.prefix}
		opts, err := o.NATS()
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(url, append(opts, nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))...)
		if err != nil {
			t.Fatal(err)
		}
		_, err = nc.Request("svc", nil, time.Second)
		nc.Close()
		if (err == nil) != tc.ok {
			t.Fatalf("prefix %q: request error %v, want ok=%v", tc.prefix, err, tc.ok)
		}
	}
}
