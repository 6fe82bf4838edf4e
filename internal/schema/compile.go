package schema

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"github.com/bufbuild/protocompile"
	"github.com/bufbuild/protocompile/linker"
	"github.com/bufbuild/protocompile/reporter"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/natter/natter/schemas"
)

// validateImport is the one import no Go module ships as text: it resolves
// to the descriptor compiled into protovalidate's generated package.
const validateImport = "buf/validate/validate.proto"

// maxCompileErrors bounds how many errors Load reports for broken schemas.
const maxCompileErrors = 10

// source is one .proto file to compile.
type source struct {
	origin  string // where it came from, for errors: a file path, or "schemas.FS: <path>"
	data    []byte
	shipped bool // from schemas.FS
}

// builtin reports whether an import path always resolves to a descriptor
// compiled into the binary, so that a copy in a user directory (as left by
// "buf export") is ignored rather than compiled twice.
func builtin(p string) bool {
	return p == validateImport || strings.HasPrefix(p, "google/protobuf/")
}

// gather reads the shipped schemas and every .proto file under dirs, keyed
// by import path (relative to its root, slash-separated).
func gather(dirs []string) (map[string]source, error) {
	srcs := make(map[string]source)
	err := fs.WalkDir(schemas.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || path.Ext(p) != ".proto" {
			return err
		}
		data, err := fs.ReadFile(schemas.FS, p)
		if err != nil {
			return err
		}
		srcs[p] = source{origin: "schemas.FS: " + p, data: data, shipped: true}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("schema: read shipped schemas: %w", err)
	}
	for _, dir := range dirs {
		if dir == "" {
			return nil, fmt.Errorf("%w: empty directory in Dirs", ErrInvalidConfig)
		}
		st, err := os.Stat(dir)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("%w: %s is not a directory", ErrInvalidConfig, dir)
		}
		err = filepath.WalkDir(dir, func(file string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || filepath.Ext(file) != ".proto" {
				return err
			}
			rel, err := filepath.Rel(dir, file)
			if err != nil {
				return err
			}
			p := filepath.ToSlash(rel)
			if builtin(p) {
				return nil
			}
			data, err := os.ReadFile(file)
			if err != nil {
				return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
			}
			if prev, ok := srcs[p]; ok {
				if prev.shipped && bytes.Equal(prev.data, data) {
					return nil // a vendored copy of a shipped file, for the user's own tools
				}
				return fmt.Errorf("%w: %s and %s both define import path %q", ErrInvalidConfig, prev.origin, file, p)
			}
			srcs[p] = source{origin: file, data: data}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return srcs, nil
}

// compile compiles every source file. Imports resolve, in order, to
// buf/validate/validate.proto from its generated Go package, the sources
// themselves, and the standard google/protobuf imports.
func compile(ctx context.Context, srcs map[string]source) (linker.Files, error) {
	resolver := protocompile.WithStandardImports(protocompile.ResolverFunc(func(p string) (protocompile.SearchResult, error) {
		if p == validateImport {
			return protocompile.SearchResult{Desc: validate.File_buf_validate_validate_proto}, nil
		}
		if s, ok := srcs[p]; ok && !builtin(p) {
			return protocompile.SearchResult{Source: bytes.NewReader(s.data)}, nil
		}
		return protocompile.SearchResult{}, fmt.Errorf("%s: %w", p, fs.ErrNotExist)
	}))

	var (
		mu   sync.Mutex
		errs []error
	)
	rep := reporter.NewReporter(func(e reporter.ErrorWithPos) error {
		mu.Lock()
		defer mu.Unlock()
		errs = append(errs, positioned(srcs, e))
		if len(errs) >= maxCompileErrors {
			return e // stop compiling
		}
		return nil
	}, nil)

	c := protocompile.Compiler{
		Resolver:       resolver,
		Reporter:       rep,
		SourceInfoMode: protocompile.SourceInfoStandard, // comments become JSON Schema descriptions
	}
	names := slices.Sorted(maps.Keys(srcs))
	files, err := c.Compile(ctx, names...)
	if len(errs) > 0 {
		slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
	}
	if err != nil {
		var ewp reporter.ErrorWithPos
		if errors.As(err, &ewp) { // a missing import, say
			err = positioned(srcs, ewp)
		}
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return files, nil
}

// positioned rewrites a compiler error to name the file it came from, as a
// path on disk for user files.
func positioned(srcs map[string]source, e reporter.ErrorWithPos) error {
	pos := e.GetPosition()
	name := pos.Filename
	if s, ok := srcs[name]; ok {
		name = s.origin
	}
	return fmt.Errorf("%s:%d:%d: %w", name, pos.Line, pos.Col, e.Unwrap())
}

// registryOf puts the compiled files and everything they import into one
// protoregistry.Files, rebuilt with protodesc: protocompile's descriptors
// resolve editions features on every call, and the hot path asks for them
// often (presence, through protojson and dynamicpb). Imports that came as
// compiled-in descriptors (buf.validate, google/protobuf) stay as they are.
func registryOf(files linker.Files) (*protoregistry.Files, error) {
	reg := new(protoregistry.Files)
	seen := make(map[string]bool)
	var add func(fd protoreflect.FileDescriptor) error
	add = func(fd protoreflect.FileDescriptor) error {
		if seen[fd.Path()] {
			return nil
		}
		seen[fd.Path()] = true
		imports := fd.Imports()
		for i := range imports.Len() {
			if err := add(imports.Get(i).FileDescriptor); err != nil {
				return err
			}
		}
		if r, ok := fd.(linker.Result); ok {
			rebuilt, err := protodesc.NewFile(r.FileDescriptorProto(), reg)
			if err != nil {
				return fmt.Errorf("%s: %w", fd.Path(), err)
			}
			fd = rebuilt
		} else if u, ok := fd.(interface {
			Unwrap() protoreflect.FileDescriptor
		}); ok {
			fd = u.Unwrap() // linker wraps descriptors it did not compile
		}
		return reg.RegisterFile(fd)
	}
	for _, f := range files {
		if err := add(f); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
	}
	return reg, nil
}
