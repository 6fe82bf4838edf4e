package demo

import (
	"bytes"
	"embed"
	"html"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// contentSecurityPolicy lets the page load only its own files and talk only
// to its own origin (the WebSocket endpoint included: "ws:"/"wss:" schemes of
// the page's host match 'self').
const contentSecurityPolicy = "default-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// Handler serves the demo page (index.html at "/") and its assets, for an
// edge whose WebSocket endpoint is wsPath. Other methods than GET and HEAD
// get 405. Responses are not cached, so a rebuilt binary shows the new page
// at once.
func Handler(wsPath string) http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // "static" is embedded above: unreachable
	}
	index, err := fs.ReadFile(sub, "index.html")
	if err != nil {
		panic(err) // embedded above: unreachable
	}
	index = bytes.Replace(index, []byte(`<meta name="natter-ws-path" content="/ws">`),
		[]byte(`<meta name="natter-ws-path" content="`+html.EscapeString(wsPath)+`">`), 1)
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		if r.URL.Path == "/" || r.URL.Path == "/index.html" {
			h.Set("Content-Type", "text/html; charset=utf-8")
			if r.Method == http.MethodGet {
				_, _ = w.Write(index)
			}
			return
		}
		files.ServeHTTP(w, r)
	})
}
