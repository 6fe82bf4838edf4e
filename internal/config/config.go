// Package config fills a flag.FlagSet from the command line, environment
// variables and a YAML file, in that order of precedence:
//
//  1. a flag given on the command line;
//  2. the environment variable NATTER_<NAME>, the flag's name in upper case
//     with '-' as '_' (--presence-replicas: NATTER_PRESENCE_REPLICAS); a
//     repeatable flag takes one value from its variable (use the file for
//     more);
//  3. the key <name> of the file named by --config (or NATTER_CONFIG), a
//     YAML mapping of flag names to values; a list sets a repeatable flag
//     once per item;
//  4. the flag's default.
//
// Unknown keys in the file are errors, so a typo does not go unnoticed.
package config

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ErrInvalid wraps every configuration error.
var ErrInvalid = errors.New("config: invalid")

// EnvPrefix precedes the flag names in environment variables.
const EnvPrefix = "NATTER_"

// FlagConfig is the flag naming the config file.
const FlagConfig = "config"

// SplitList splits a comma-separated flag value into its items, trimmed,
// dropping empty ones ("a, b,,c" is a, b, c).
func SplitList(v string) []string {
	var out []string
	for p := range strings.SplitSeq(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// EnvName is the environment variable of a flag.
func EnvName(flagName string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Register adds --config to fs and a usage text that explains the sources.
func Register(fs *flag.FlagSet, command string) *string {
	file := fs.String(FlagConfig, "", "YAML `file` of flag values (keys are flag names); env "+EnvName(FlagConfig))
	fs.Usage = func() {
		out := fs.Output()
		fmt.Fprintf(out, "Usage: %s [flags]\n\n", command)
		fmt.Fprintf(out, "Every flag can also be set by the environment variable %s<FLAG> (upper case,\n", EnvPrefix)
		fmt.Fprintf(out, "'-' as '_', e.g. %s) or by a key of the --config YAML file.\n", EnvName("log-level"))
		fmt.Fprintf(out, "Precedence: command line, then environment, then file, then default.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	return file
}

// Parse parses args into fs, then fills every flag not given on the
// command line from the environment, then from the config file.
func Parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })

	fromEnv := map[string]bool{}
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		if v, ok := os.LookupEnv(EnvName(f.Name)); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%w: %s=%q: %v", ErrInvalid, EnvName(f.Name), v, err))
			}
			fromEnv[f.Name] = true
		}
	})
	if len(errs) > 0 {
		return errors.Join(errs...)
	}

	file := ""
	if f := fs.Lookup(FlagConfig); f != nil {
		file = f.Value.String()
	}
	if file == "" {
		return nil
	}
	values, err := readFile(file)
	if err != nil {
		return err
	}
	names := make([]string, 0, len(values))
	for k := range values {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		if fs.Lookup(name) == nil || name == FlagConfig {
			errs = append(errs, fmt.Errorf("%w: %s: unknown key %q", ErrInvalid, file, name))
			continue
		}
		if given[name] || fromEnv[name] {
			continue
		}
		for _, v := range values[name] {
			if err := fs.Set(name, v); err != nil {
				errs = append(errs, fmt.Errorf("%w: %s: %s: %q: %v", ErrInvalid, file, name, v, err))
			}
		}
	}
	return errors.Join(errs...)
}

// readFile reads a YAML mapping of flag names to scalars or lists of
// scalars, as strings.
func readFile(file string) (map[string][]string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	var raw map[string]yaml.Node
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, file, err)
	}
	out := make(map[string][]string, len(raw))
	for k, n := range raw {
		switch n.Kind {
		case yaml.ScalarNode:
			out[k] = []string{n.Value}
		case yaml.SequenceNode:
			for _, item := range n.Content {
				if item.Kind != yaml.ScalarNode {
					return nil, fmt.Errorf("%w: %s: %s: list items must be scalars", ErrInvalid, file, k)
				}
				out[k] = append(out[k], item.Value)
			}
		default:
			return nil, fmt.Errorf("%w: %s: %s: must be a scalar or a list", ErrInvalid, file, k)
		}
	}
	return out, nil
}
