package ops_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"testing"

	"github.com/natter/natter/internal/ops"
)

// The admin listener serves until Shutdown, which waits for its serving
// goroutine and may be called again.
func TestServeAndShutdownTwice(t *testing.T) {
	t.Parallel()
	s := ops.New("127.0.0.1:0", slog.New(slog.DiscardHandler))
	var draining ops.Draining
	s.AddCheck("draining", draining.Check)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	get := func(path string) int {
		t.Helper()
		resp, err := http.Get("http://" + s.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	tests := []struct {
		name  string
		path  string
		drain bool
		want  int
	}{
		{"liveness", "/healthz", false, http.StatusOK},
		{"ready", "/readyz", false, http.StatusOK},
		{"draining", "/readyz", true, http.StatusServiceUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.drain {
				draining.Start()
			}
			if got := get(tc.path); got != tc.want {
				t.Fatalf("GET %s = %d, want %d", tc.path, got, tc.want)
			}
		})
	}
	if !errors.Is(s.Ready(), ops.ErrDraining) {
		t.Fatalf("Ready = %v, want ErrDraining", s.Ready())
	}
	for range 2 {
		if err := s.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := http.Get("http://" + s.Addr() + "/healthz"); err == nil {
		t.Fatal("served after Shutdown")
	}
}

// Without an address nothing listens, and Shutdown has nothing to do.
func TestNoAddress(t *testing.T) {
	t.Parallel()
	s := ops.New("", slog.New(slog.DiscardHandler))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if s.Addr() != "" {
		t.Fatalf("Addr = %q, want none", s.Addr())
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}
