package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestCheck(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.Error(w, "draining", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	for _, tc := range []struct {
		name, url string
		ok        bool
	}{
		{"ready", srv.URL + "/readyz", true},
		{"not ready", srv.URL + "/other", false},
		{"no server", "http://127.0.0.1:1/readyz", false},
		{"bad url", "::", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := check(context.Background(), tc.url); (err == nil) != tc.ok {
				t.Fatalf("check(%q) = %v, want ok=%v", tc.url, err, tc.ok)
			}
		})
	}
}
