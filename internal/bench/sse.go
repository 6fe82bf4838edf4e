package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// sseStream is a member's fallback stream: GET <path>/sse?room=<room>,
// read as an EventSource reads it. Only its data events matter here.
type sseStream struct {
	cancel context.CancelFunc
}

func (s *sseStream) stop() { s.cancel() }

// transports are the HTTP clients of fallback members, one per loopback
// source address, so that streams spread over them as WebSockets do.
var (
	transportsMu sync.Mutex
	transports   = map[string]*http.Transport{}
)

func (d *dialer) transport(i int) *http.Transport {
	key := ""
	nd := &net.Dialer{Timeout: dialTimeout}
	if d.addrs != nil {
		ip := d.addrs[i%len(d.addrs)]
		nd.LocalAddr = &net.TCPAddr{IP: ip}
		key = ip.String()
	}
	transportsMu.Lock()
	defer transportsMu.Unlock()
	t := transports[key]
	if t == nil {
		t = &http.Transport{DialContext: nd.DialContext, MaxIdleConnsPerHost: 64, ResponseHeaderTimeout: handshakeTimeout}
		transports[key] = t
	}
	return t
}

// streamURL is the fallback stream's URL for the WebSocket URL d.url:
// http instead of ws, <path>/sse, the same query, and room.
func (d *dialer) streamURL(room string) (string, error) {
	u, err := url.Parse(d.url)
	if err != nil {
		return "", err
	}
	u.Scheme = "http"
	u.Path = strings.TrimSuffix(u.Path, "/") + "/sse"
	q := u.Query()
	q.Set("room", room)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// joinSSE opens member m's stream, which joins the room at open, and
// waits for its $joined; the stream's reader runs in p.loops.
func (p *pool) joinSSE(ctx context.Context, d *dialer, i int, m *member) error {
	u, err := d.streamURL(p.room)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(context.Background())
	m.stream = &sseStream{cancel: cancel}
	req, err := http.NewRequestWithContext(sctx, http.MethodGet, u, nil)
	if err != nil {
		cancel()
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := (&http.Client{Transport: d.transport(i)}).Do(req)
	if err != nil {
		cancel()
		return fmt.Errorf("dial: %s", errorKind(err))
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel()
		return fmt.Errorf("handshake: HTTP %d", resp.StatusCode)
	}
	p.loops.Go(func() { m.readStream(resp) })
	if err := m.awaitJoined(ctx); err != nil {
		cancel()
		return err
	}
	return nil
}

// readStream reads the events of m's stream until it ends: each data
// event is one JSON envelope, read as a WebSocket text frame is.
func (m *member) readStream(resp *http.Response) {
	defer resp.Body.Close()
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	var data []byte
	named := false // an event with a name (session, close): not an envelope
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			break
		}
		line = bytes.TrimRight(line, "\r\n")
		switch {
		case len(line) == 0:
			if len(data) > 0 && !named {
				m.onText(time.Now().UnixNano(), data)
			}
			data, named = data[:0], false
		case bytes.HasPrefix(line, []byte("event:")):
			named = true
		case bytes.HasPrefix(line, []byte("data: ")):
			if len(data) > 0 {
				data = append(data, '\n')
			}
			data = append(data, line[len("data: "):]...)
		}
	}
	if !m.byUs.Load() {
		m.closed.Store(true)
	}
}
