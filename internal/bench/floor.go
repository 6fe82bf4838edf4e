package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lxzan/gws"
)

// floorReadyPrefix starts the line a floor server prints once it listens,
// followed by its address.
const floorReadyPrefix = "floor listening on "

// floorReadBufferSize is the floor's per-connection read buffer, the same
// as the edge's default (--read-buffer-size), so that RSS compares
// everything else.
const floorReadBufferSize = 1024

// ServeFloor runs the floor server on addr until ctx ends: the baseline the
// edge is measured against. It has no broker and does no envelope work:
//
//   - it upgrades WebSocket requests on any path with gws.NewUpgrader and
//     gws's default options, except ReadBufferSize (1024, the edge's
//     default);
//   - it answers a text frame holding a $join envelope with a $joined
//     envelope, as the edge does, and remembers the socket as a member of
//     that room (until it closes);
//   - POST /publish?start=<unix ns>&rate=<msg/s>&count=<n>&pad=<bytes>&room=<id>
//     generates count ticks on the same schedule as the bench's NATS
//     publisher (tick n due at start + n/rate), each the frame the edge would
//     deliver ({"type":"bench.tick","meta":{"room":..},"payload":{"t","n","pad"}}),
//     encoded once and sent to every member with gws's Broadcaster; it
//     answers {"sent":n,"lagMaxNs":..} when done. A tick's t is the time
//     it was due, not when the floor got round to it: the edge's input
//     waits in NATS when the edge falls behind, and the floor's must count
//     the same.
//
// Once listening, it writes "floor listening on <host:port>" and a newline
// to ready. Like the edge, it raises its open-file limit to the hard limit.
func ServeFloor(ctx context.Context, addr string, ready io.Writer) error {
	if _, err := RaiseFileLimit(); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("bench: floor: %w", err)
	}
	f := &floor{conns: map[*gws.Conn]struct{}{}, rooms: map[string]map[*gws.Conn]struct{}{}}
	f.up = gws.NewUpgrader(f, &gws.ServerOption{ReadBufferSize: floorReadBufferSize})
	mux := http.NewServeMux()
	mux.HandleFunc("POST /publish", f.publish)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		conn, err := f.up.Upgrade(w, r)
		if err != nil {
			return // gws has answered
		}
		f.mu.Lock()
		f.conns[conn] = struct{}{}
		f.mu.Unlock()
		f.loops.Go(conn.ReadLoop)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	if _, err := fmt.Fprintf(ready, "%s%s\n", floorReadyPrefix, ln.Addr()); err != nil {
		_ = srv.Close()
		return err
	}
	select {
	case err = <-served:
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = srv.Shutdown(sctx)
		cancel()
	}
	// Hijacked sockets are the floor's to close.
	f.mu.Lock()
	for c := range f.conns {
		_ = c.WriteClose(1001, nil)
	}
	f.mu.Unlock()
	waitBounded(&f.loops, 5*time.Second)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// floor is the floor server's state. mu guards conns and rooms.
type floor struct {
	up    *gws.Upgrader
	mu    sync.RWMutex
	conns map[*gws.Conn]struct{}
	rooms map[string]map[*gws.Conn]struct{}
	loops sync.WaitGroup
}

// roomsKey is the session key holding the rooms a socket joined.
const roomsKey = "rooms"

func (f *floor) OnOpen(*gws.Conn) {}
func (f *floor) OnClose(c *gws.Conn, _ error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.conns, c)
	if v, ok := c.Session().Load(roomsKey); ok {
		for _, room := range v.([]string) {
			if members := f.rooms[room]; members != nil {
				delete(members, c)
				if len(members) == 0 {
					delete(f.rooms, room)
				}
			}
		}
	}
}
func (f *floor) OnPing(c *gws.Conn, p []byte) { _ = c.WritePong(p) }
func (f *floor) OnPong(*gws.Conn, []byte)     {}

// OnMessage answers $join; everything else is ignored.
func (f *floor) OnMessage(c *gws.Conn, m *gws.Message) {
	defer m.Close()
	if m.Opcode != gws.OpcodeText {
		return
	}
	var env struct {
		Type string `json:"type"`
		Meta struct {
			CorrelationID string `json:"correlationId"`
		} `json:"meta"`
		Payload struct {
			Room string `json:"room"`
		} `json:"payload"`
	}
	if json.Unmarshal(m.Bytes(), &env) != nil || env.Type != "$join" || env.Payload.Room == "" {
		return
	}
	room := env.Payload.Room
	f.mu.Lock()
	members := f.rooms[room]
	if members == nil {
		members = map[*gws.Conn]struct{}{}
		f.rooms[room] = members
	}
	if _, in := members[c]; !in {
		members[c] = struct{}{}
		var joined []string
		if v, ok := c.Session().Load(roomsKey); ok {
			joined = v.([]string)
		}
		c.Session().Store(roomsKey, append(joined, room))
	}
	f.mu.Unlock()
	q := strconv.Quote(room)
	meta := `{"room":` + q + `}`
	if env.Meta.CorrelationID != "" {
		meta = `{"correlationId":` + strconv.Quote(env.Meta.CorrelationID) + `,"room":` + q + `}`
	}
	_ = c.WriteString(`{"type":"$joined","meta":` + meta + `,"payload":{"room":` + q + `}}`)
}

// publish serves POST /publish.
func (f *floor) publish(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	start, err1 := strconv.ParseInt(q.Get("start"), 10, 64)
	rate, err2 := strconv.Atoi(q.Get("rate"))
	count, err3 := strconv.ParseInt(q.Get("count"), 10, 64)
	pad, err4 := strconv.Atoi(q.Get("pad"))
	room := q.Get("room")
	if err := errors.Join(err1, err2, err3, err4); err != nil || rate < 1 || count < 0 || pad < 0 || pad > 1<<20 || room == "" {
		http.Error(w, "want start, rate >= 1, count >= 0, pad in 0..1MiB and room", http.StatusBadRequest)
		return
	}
	padding := strings.Repeat("x", pad)
	prefix := `{"type":"` + tickType + `","meta":{"room":` + strconv.Quote(room) + `},"payload":`
	lag, err := pace(r.Context(), time.Unix(0, start), rate, count, func(n int64, due time.Time) error {
		// A new buffer per tick: the Broadcaster keeps it until its
		// frames are written.
		b := make([]byte, 0, len(prefix)+pad+64)
		b = append(b, prefix...)
		// The tick's time is when it was due: when a broker would have
		// handed it to the server. A floor that falls behind its schedule
		// is late, as an edge whose NATS input queues up is.
		b = appendTick(b, due.UnixNano(), n, padding)
		b = append(b, '}')
		bc := gws.NewBroadcaster(gws.OpcodeText, b)
		f.mu.RLock()
		for c := range f.rooms[room] {
			_ = bc.Broadcast(c)
		}
		f.mu.RUnlock()
		return bc.Close()
	})
	if err != nil {
		return // the bench went away
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(publishReply{Sent: count, LagMaxNs: int64(lag)})
}

// floorProc is a floor server child process.
type floorProc struct {
	cmd    *exec.Cmd
	addr   string
	waited chan struct{}
}

// startFloor starts argv, which must serve the floor and print its ready
// line, and waits (bounded) for that line. The child gets SIGKILL if this
// process dies; stop kills it otherwise.
func startFloor(ctx context.Context, argv []string, log io.Writer) (*floorProc, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("%w: no floor command", ErrInvalidConfig)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start floor: %w", err)
	}
	p := &floorProc{cmd: cmd, waited: make(chan struct{})}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), floorReadyPrefix); ok {
				select {
				case addr <- a:
				default:
				}
				continue
			}
			fmt.Fprintln(log, "floor:", sc.Text())
		}
		_ = cmd.Wait()
		close(p.waited)
	}()
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case p.addr = <-addr:
		return p, nil
	case <-p.waited:
		err = fmt.Errorf("bench: floor exited before listening: %v", cmd.ProcessState)
	case <-t.C:
		err = errors.New("bench: floor did not listen within 10s")
	case <-ctx.Done():
		err = ctx.Err()
	}
	p.stop()
	return nil, err
}

func (p *floorProc) pid() int { return p.cmd.Process.Pid }

// stop kills the child and waits for it.
func (p *floorProc) stop() {
	_ = p.cmd.Process.Signal(os.Kill)
	<-p.waited
}
