package config_test

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/natter/natter/internal/config"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func flags() (*flag.FlagSet, *string, *int, *bool, *list) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	config.Register(fs, "t")
	var l list
	fs.Var(&l, "schemas", "")
	return fs, fs.String("nats", "default", ""), fs.Int("presence-replicas", 1, ""), fs.Bool("anonymous", false, ""), &l
}

func TestPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "natter.yaml")
	if err := os.WriteFile(file, []byte("nats: from-file\npresence-replicas: 5\nanonymous: true\nschemas: [a, b]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		args     []string
		env      map[string]string
		nats     string
		replicas int
		anon     bool
		schemas  string
	}{
		{name: "defaults", nats: "default", replicas: 1},
		{name: "file", args: []string{"--config", file}, nats: "from-file", replicas: 5, anon: true, schemas: "a,b"},
		{name: "config file from env", env: map[string]string{"NATTER_CONFIG": file}, nats: "from-file", replicas: 5, anon: true, schemas: "a,b"},
		{name: "env over file", args: []string{"--config", file}, env: map[string]string{"NATTER_NATS": "from-env", "NATTER_PRESENCE_REPLICAS": "3"},
			nats: "from-env", replicas: 3, anon: true, schemas: "a,b"},
		{name: "flag over env and file", args: []string{"--config", file, "--nats", "from-flag", "--schemas", "c"}, env: map[string]string{"NATTER_NATS": "from-env"},
			nats: "from-flag", replicas: 5, anon: true, schemas: "c"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			fs, nats, replicas, anon, schemas := flags()
			if err := config.Parse(fs, tc.args); err != nil {
				t.Fatal(err)
			}
			if *nats != tc.nats || *replicas != tc.replicas || *anon != tc.anon || schemas.String() != tc.schemas {
				t.Fatalf("got nats=%q replicas=%d anonymous=%v schemas=%q", *nats, *replicas, *anon, schemas.String())
			}
		})
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
	}{
		{"unknown key", []string{"--config", write("typo.yaml", "natts: x\n")}, nil},
		{"bad value in file", []string{"--config", write("bad.yaml", "presence-replicas: many\n")}, nil},
		{"nested value", []string{"--config", write("nested.yaml", "nats: {a: 1}\n")}, nil},
		{"missing file", []string{"--config", filepath.Join(dir, "nope.yaml")}, nil},
		{"bad env value", nil, map[string]string{"NATTER_PRESENCE_REPLICAS": "x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			fs, _, _, _, _ := flags()
			if err := config.Parse(fs, tc.args); !errors.Is(err, config.ErrInvalid) {
				t.Fatalf("err %v, want ErrInvalid", err)
			}
		})
	}
}

func TestSplitList(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string
	}{
		{"empty", "", nil},
		{"one", "a", []string{"a"}},
		{"trimmed", " a , b ", []string{"a", "b"}},
		{"empty items dropped", "a,,b,", []string{"a", "b"}},
		{"only commas", " , ,", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := config.SplitList(tc.in); !slices.Equal(got, tc.want) {
				t.Fatalf("SplitList(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}
