package natsopt

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
)

// ErrInvalidOptions wraps every error of Options.NATS: options that do not
// go together, and files that cannot be read or parsed.
var ErrInvalidOptions = errors.New("natsopt: invalid NATS options")

// Environment variables that NATS reads when the matching field is empty,
// so that secrets need not appear on the command line.
const (
	EnvPassword = "NATTER_NATS_PASSWORD"
	EnvToken    = "NATTER_NATS_TOKEN"
)

// Flag names, as Register registers them.
const (
	FlagCreds         = "nats-creds"
	FlagNKey          = "nats-nkey"
	FlagUser          = "nats-user"
	FlagPassword      = "nats-password"
	FlagToken         = "nats-token"
	FlagTLSCA         = "nats-tls-ca"
	FlagTLSCert       = "nats-tls-cert"
	FlagTLSKey        = "nats-tls-key"
	FlagTLSServerName = "nats-tls-server-name"
	FlagInboxPrefix   = "nats-inbox-prefix"
)

// Options are how a process authenticates to NATS and secures the
// connection. The zero value connects without credentials and without TLS
// (unless the URL is tls://). At most one way to authenticate may be set:
// Creds, NKeySeedFile, User with Password, or Token.
type Options struct {
	// Creds is a credentials file (a user JWT and its nkey seed, as nsc
	// writes them), for servers in operator (JWT) mode. Default: none.
	Creds string
	// NKeySeedFile is a file holding a user nkey seed ("SU..."), for servers
	// that list users by public nkey. Default: none.
	NKeySeedFile string
	// User is a user name from the server's configuration; it needs a
	// password. Default: none.
	User string
	// Password is User's password. Empty: read from NATTER_NATS_PASSWORD.
	Password string
	// Token is the server's authorization token. Empty: read from
	// NATTER_NATS_TOKEN.
	Token string
	// TLSCA is a PEM file of the CAs that verify the server's certificate.
	// Setting it turns TLS on. Default: the system roots.
	TLSCA string
	// TLSCert is a PEM client certificate, for servers that verify clients.
	// It needs TLSKey. Setting it turns TLS on. Default: none.
	TLSCert string
	// TLSKey is the PEM private key of TLSCert. Default: none.
	TLSKey string
	// TLSServerName is the name the server's certificate must carry.
	// Setting it turns TLS on. Default: the host of the URL connected to.
	TLSServerName string
	// InboxPrefix replaces "_INBOX" in reply subjects, so that each role's
	// NATS permissions can allow only its own replies. Default: "_INBOX".
	InboxPrefix string
}

// Register adds the --nats-* flags for o to fs. Flags default to o's
// current values, except that secrets are never shown in the help text.
func (o *Options) Register(fs *flag.FlagSet) {
	fs.StringVar(&o.Creds, FlagCreds, o.Creds,
		"NATS credentials `file` (user JWT and nkey seed, as nsc writes them) for servers in operator mode")
	fs.StringVar(&o.NKeySeedFile, FlagNKey, o.NKeySeedFile,
		"`file` holding the NATS user's nkey seed (SU...)")
	fs.StringVar(&o.User, FlagUser, o.User,
		"NATS user `name`; needs a password")
	fs.Var((*secret)(&o.Password), FlagPassword,
		"NATS `password` of --"+FlagUser+"; when empty, $"+EnvPassword+" is read, which keeps it out of ps")
	fs.Var((*secret)(&o.Token), FlagToken,
		"NATS authorization `token`; when empty, $"+EnvToken+" is read, which keeps it out of ps")
	fs.StringVar(&o.TLSCA, FlagTLSCA, o.TLSCA,
		"PEM `file` of the CAs that verify the NATS server's certificate (default: system roots); turns TLS on")
	fs.StringVar(&o.TLSCert, FlagTLSCert, o.TLSCert,
		"PEM client certificate `file` for NATS servers that verify clients; needs --"+FlagTLSKey+"; turns TLS on")
	fs.StringVar(&o.TLSKey, FlagTLSKey, o.TLSKey,
		"PEM private key `file` of --"+FlagTLSCert)
	fs.StringVar(&o.TLSServerName, FlagTLSServerName, o.TLSServerName,
		"`name` the NATS server's certificate must carry (default: the URL's host); turns TLS on")
	fs.StringVar(&o.InboxPrefix, FlagInboxPrefix, o.InboxPrefix,
		"`prefix` of reply subjects instead of _INBOX, so permissions can keep each role's replies private")
}

// secret is a flag value whose default is never printed.
type secret string

func (s *secret) String() string     { return "" }
func (s *secret) Set(v string) error { *s = secret(v); return nil }

// NATS turns o into nats.go options, to pass to nats.Connect. It reads the
// password and token from the environment when they are empty, rejects
// options that do not go together, and reads every file once so that a
// missing or malformed one fails here rather than at the first connect.
// Every error wraps ErrInvalidOptions (and the file error, if any).
func (o *Options) NATS() ([]nats.Option, error) {
	password, passwordFrom := fromEnv(o.Password, "--"+FlagPassword, EnvPassword)
	token, tokenFrom := fromEnv(o.Token, "--"+FlagToken, EnvToken)

	var methods []string
	if o.Creds != "" {
		methods = append(methods, "--"+FlagCreds)
	}
	if o.NKeySeedFile != "" {
		methods = append(methods, "--"+FlagNKey)
	}
	if o.User != "" || password != "" {
		methods = append(methods, "--"+FlagUser)
	}
	if token != "" {
		methods = append(methods, tokenFrom)
	}
	switch {
	case len(methods) > 1:
		return nil, fmt.Errorf("%w: %s exclude each other; authenticate one way", ErrInvalidOptions, strings.Join(methods, " and "))
	case o.User != "" && password == "":
		return nil, fmt.Errorf("%w: --%s %q needs --%s or $%s", ErrInvalidOptions, FlagUser, o.User, FlagPassword, EnvPassword)
	case o.User == "" && password != "":
		return nil, fmt.Errorf("%w: %s needs --%s", ErrInvalidOptions, passwordFrom, FlagUser)
	case o.TLSCert != "" && o.TLSKey == "":
		return nil, fmt.Errorf("%w: --%s needs --%s", ErrInvalidOptions, FlagTLSCert, FlagTLSKey)
	case o.TLSKey != "" && o.TLSCert == "":
		return nil, fmt.Errorf("%w: --%s needs --%s", ErrInvalidOptions, FlagTLSKey, FlagTLSCert)
	}

	// scratch receives every option once, which is what reads (and checks)
	// the files; nats.Connect applies them again to its own options.
	scratch := nats.GetDefaultOptions()
	var opts []nats.Option
	add := func(name, file string, opt nats.Option) error {
		if err := opt(&scratch); err != nil {
			return fmt.Errorf("%w: --%s %s: %w", ErrInvalidOptions, name, file, err)
		}
		opts = append(opts, opt)
		return nil
	}

	switch {
	case o.Creds != "":
		if err := add(FlagCreds, o.Creds, nats.UserCredentials(o.Creds)); err != nil {
			return nil, err
		}
		// The JWT and the seed are read at each connect; read them now too.
		if _, err := scratch.UserJWT(); err != nil {
			return nil, fmt.Errorf("%w: --%s %s: %w", ErrInvalidOptions, FlagCreds, o.Creds, err)
		}
		if _, err := scratch.SignatureCB([]byte("natsopt")); err != nil {
			return nil, fmt.Errorf("%w: --%s %s: %w", ErrInvalidOptions, FlagCreds, o.Creds, err)
		}
	case o.NKeySeedFile != "":
		opt, err := nats.NkeyOptionFromSeed(o.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("%w: --%s %s: %w", ErrInvalidOptions, FlagNKey, o.NKeySeedFile, err)
		}
		opts = append(opts, opt)
	case o.User != "":
		opts = append(opts, nats.UserInfo(o.User, password))
	case token != "":
		opts = append(opts, nats.Token(token))
	}

	if o.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(o.InboxPrefix))
	}
	if o.TLSCA != "" || o.TLSCert != "" || o.TLSServerName != "" {
		// First, so that RootCAs and ClientCert keep this config (they only
		// make one when there is none).
		opts = append(opts, nats.Secure(&tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.TLSServerName}))
		if o.TLSCA != "" {
			if err := add(FlagTLSCA, o.TLSCA, nats.RootCAs(o.TLSCA)); err != nil {
				return nil, err
			}
		}
		if o.TLSCert != "" {
			if err := add(FlagTLSCert, o.TLSCert, nats.ClientCert(o.TLSCert, o.TLSKey)); err != nil {
				return nil, err
			}
		}
	}
	return opts, nil
}

// fromEnv returns v, or the environment variable env when v is empty, with
// where the value came from for error messages.
func fromEnv(v, flagName, env string) (string, string) {
	if v != "" {
		return v, flagName
	}
	return os.Getenv(env), "$" + env
}
