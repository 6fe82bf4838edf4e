package demo_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/natter/natter/internal/demo"
)

func TestHandler(t *testing.T) {
	srv := httptest.NewServer(demo.Handler("/ws"))
	defer srv.Close()
	for _, tc := range []struct {
		name, method, path string
		status             int
		contentType        string // prefix
		body               string // substring
	}{
		{"index at root", "GET", "/", 200, "text/html", `data-testid="conn-state"`},
		{"app module", "GET", "/app.js", 200, "text/javascript", `from "./natter.js"`},
		{"client module", "GET", "/natter.js", 200, "text/javascript", "connect"},
		{"style", "GET", "/style.css", 200, "text/css", ".badge"},
		{"head", "HEAD", "/", 200, "text/html", ""},
		{"missing file", "GET", "/nope.js", 404, "", ""},
		{"post", "POST", "/", 405, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, tc.contentType) {
				t.Errorf("Content-Type %q, want %q...", ct, tc.contentType)
			}
			if !strings.Contains(string(body), tc.body) {
				t.Errorf("body does not contain %q", tc.body)
			}
			if tc.status == 200 {
				if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
					t.Errorf("Content-Security-Policy %q", csp)
				}
				if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
					t.Error("no X-Content-Type-Options: nosniff")
				}
			}
		})
	}
}

// TestPageReferences checks that every file the page and its module load
// is served: a typo here is a blank page.
func TestPageReferences(t *testing.T) {
	srv := httptest.NewServer(demo.Handler("/ws"))
	defer srv.Close()
	get := func(path string) string {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d", path, resp.StatusCode)
		}
		return string(b)
	}
	refs := regexp.MustCompile(`(?:src|href)="([^"]+)"|from "\./([^"]+)"`)
	for _, page := range []string{"/", "/app.js"} {
		for _, m := range refs.FindAllStringSubmatch(get(page), -1) {
			ref := m[1] + m[2]
			if strings.Contains(ref, ":") || ref == "./" {
				continue
			}
			get("/" + strings.TrimPrefix(ref, "./"))
		}
	}
}

// The page learns the edge's WebSocket path from the index it is served.
func TestHandlerWritesWSPath(t *testing.T) {
	srv := httptest.NewServer(demo.Handler(`/chat"x`))
	defer srv.Close()
	for _, path := range []string{"/", "/index.html"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), `<meta name="natter-ws-path" content="/chat&#34;x">`) {
			t.Fatalf("%s: no escaped ws path meta in:\n%s", path, body)
		}
	}
}
