package natsopt_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// write writes b to name in dir and returns the path.
func write(t testing.TB, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// pki is a test CA with a server and a client certificate, as PEM files.
type pki struct {
	CA                    string // CA certificate
	ServerCert, ServerKey string // for 127.0.0.1 and the DNS name "natter-nats"
	ClientCert, ClientKey string // client auth, CN natter-edge
}

// newPKI makes a CA and two certificates signed by it, with ECDSA P-256.
func newPKI(t testing.TB) pki {
	t.Helper()
	dir := t.TempDir()
	caKey := ecKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "natter test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage, dns []string, ips []net.IP) (string, string) {
		key := ecKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: name},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			DNSNames:     dns,
			IPAddresses:  ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return write(t, dir, name+".crt", pemBlock("CERTIFICATE", der)),
			write(t, dir, name+".key", pemBlock("EC PRIVATE KEY", kb))
	}
	var p pki
	p.CA = write(t, dir, "ca.crt", pemBlock("CERTIFICATE", caDER))
	p.ServerCert, p.ServerKey = leaf("natter-nats", 2, x509.ExtKeyUsageServerAuth,
		[]string{"natter-nats"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	p.ClientCert, p.ClientKey = leaf("natter-edge", 3, x509.ExtKeyUsageClientAuth, nil, nil)
	return p
}

func ecKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// userSeed makes a user nkey, writes its seed to a file and returns the
// file and the public key.
func userSeed(t testing.TB, dir, name string) (file, pub string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	pub, err = kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return write(t, dir, name, seed), pub
}

// operator is a JWT trust chain for an operator-mode server: an operator,
// one account signed by it, and a way to make users of that account.
type operator struct {
	Claims     *jwt.OperatorClaims
	Account    string // the account's public key
	AccountJWT string
	accountKP  nkeys.KeyPair
}

func newOperator(t testing.TB) *operator {
	t.Helper()
	okp, err := nkeys.CreateOperator()
	if err != nil {
		t.Fatal(err)
	}
	opub, _ := okp.PublicKey()
	oc := jwt.NewOperatorClaims(opub)
	oc.Name = "natter-test"
	ojwt, err := oc.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	claims, err := jwt.DecodeOperatorClaims(ojwt)
	if err != nil {
		t.Fatal(err)
	}
	akp, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	apub, _ := akp.PublicKey()
	ac := jwt.NewAccountClaims(apub)
	ac.Name = "NATTER"
	ajwt, err := ac.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	return &operator{Claims: claims, Account: apub, AccountJWT: ajwt, accountKP: akp}
}

// creds writes a credentials file for a new user of the account.
func (o *operator) creds(t testing.TB, dir, name string) string {
	t.Helper()
	ukp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	upub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.Name = name
	ujwt, err := uc.Encode(o.accountKP)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := ukp.Seed()
	b, err := jwt.FormatUserConfig(ujwt, seed)
	if err != nil {
		t.Fatal(err)
	}
	return write(t, dir, name+".creds", b)
}
