// Package natsopt holds the NATS connection options that cmd/edge and
// cmd/worker share: authentication (a credentials file, an nkey seed,
// user and password, or a token) and TLS (a CA, a client certificate, a
// server name), as command-line flags and as nats.go options.
//
//	var o natsopt.Options
//	o.Register(flag.CommandLine)
//	flag.Parse()
//	opts, err := o.NATS() // validated, files read once
//	nc, err := nats.Connect(url, append(opts, nats.Name("natter-worker"))...)
//
// Secrets can stay out of the process list: an empty --nats-password or
// --nats-token is read from NATTER_NATS_PASSWORD or NATTER_NATS_TOKEN.
// NATS reads every file once to fail early; nats.go reads the credentials,
// certificate and CA files again on every (re)connect, so rotated files take
// effect without a restart.
//
// Concurrency: an Options is plain data; NATS may be called from several
// goroutines once the flags are parsed.
package natsopt
