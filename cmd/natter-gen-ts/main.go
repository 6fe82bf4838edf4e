// Command natter-gen-ts writes the TypeScript types of message payloads,
// generated from the .proto schemas, for the TypeScript client, and
// natterSchemas, the schemas' descriptors that its binary wire
// (`wire: "protobuf"`) encodes payloads with:
//
//	go run ./cmd/natter-gen-ts > clients/src/messages.gen.ts
//	go run ./cmd/natter-gen-ts --schemas ./my-schemas -o src/messages.gen.ts
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/natter/natter/internal/schema"
	"github.com/natter/natter/internal/tsgen"
)

func main() {
	var (
		dirs []string
		out  string
	)
	flag.Func("schemas", "directory of .proto files to include besides the shipped ones (repeatable)", func(v string) error {
		dirs = append(dirs, v)
		return nil
	})
	flag.StringVar(&out, "o", "", "output file (default standard output)")
	flag.Parse()
	if err := run(dirs, out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(dirs []string, out string) error {
	reg, err := schema.Load(schema.Config{Dirs: dirs})
	if err != nil {
		return err
	}
	set, err := reg.DescriptorSet()
	if err != nil {
		return err
	}
	ts, err := tsgen.Generate(reg.Types(), set)
	if err != nil {
		return err
	}
	if out == "" {
		_, err = os.Stdout.Write(ts)
		return err
	}
	return os.WriteFile(out, ts, 0o644)
}
