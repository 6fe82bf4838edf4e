package assistant

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/natter/natter/internal/routine"
	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
	"github.com/natter/natter/pkg/worker"
)

// Room is the room whose members ask and read the answers.
const Room = "assistant"

// MaxQuestionLen bounds a question, in bytes.
const MaxQuestionLen = 500

// The message types.
const (
	TypeAsk     = "assistant.ask"
	TypeCurrent = "assistant.current"
	TypeAnswer  = "assistant.answer" // to the room: an answer begins
)

// ErrInvalidConfig wraps every configuration error of this package.
var ErrInvalidConfig = errors.New("assistant: invalid config")

// Config configures an Assistant. A zero field takes its default.
type Config struct {
	// WordDelay is the pause before each word of an answer. Default 25 ms
	// (a few hundred words take several seconds: long enough to reload a
	// page mid-answer); range up to 10 s. Tests shorten it.
	WordDelay time.Duration
	// MaxAnswers bounds the answers being written at once; one more ask
	// gets RESOURCE_EXHAUSTED. Default 16, range 1..1024.
	MaxAnswers int
	// Logger receives failures to store an answer. Default slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the defaults of Config.
func DefaultConfig() Config {
	return Config{WordDelay: 25 * time.Millisecond, MaxAnswers: 16, Logger: slog.Default()}
}

func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig()
	if c.WordDelay == 0 {
		c.WordDelay = d.WordDelay
	}
	if c.MaxAnswers == 0 {
		c.MaxAnswers = d.MaxAnswers
	}
	if c.Logger == nil {
		c.Logger = d.Logger
	}
	switch {
	case c.WordDelay < 0 || c.WordDelay > 10*time.Second:
		return c, fmt.Errorf("%w: WordDelay %v: want up to 10s", ErrInvalidConfig, c.WordDelay)
	case c.MaxAnswers < 1 || c.MaxAnswers > 1024:
		return c, fmt.Errorf("%w: MaxAnswers %d: want 1..1024", ErrInvalidConfig, c.MaxAnswers)
	}
	return c, nil
}

// Announcement is the payload of TypeAnswer, published to the room when
// an answer begins.
type Announcement struct {
	Stream   string `json:"stream"`
	Question string `json:"question"`
	User     string `json:"user"`
}

// Current is the reply to TypeCurrent. Stream is nil before the first
// answer.
type Current struct {
	Stream   *string `json:"stream"`
	Question string  `json:"question,omitempty"`
	User     string  `json:"user,omitempty"`
}

// Assistant answers the room's questions; see the package doc.
type Assistant struct {
	cfg     Config
	writers routine.Group // one goroutine per answer being written

	mu      sync.Mutex
	writing int           // answers being written
	last    *Announcement // the answer opened last
}

// Register adds the assistant's handlers to w. Close the Assistant after
// w has drained, before its NATS connection closes: the answers being
// written then end UNAVAILABLE instead of waiting for an edge to find
// their producer gone.
func Register(w *worker.Worker, cfg Config) (*Assistant, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	a := &Assistant{cfg: cfg}
	if err := w.Handle(TypeAsk, a.ask); err != nil {
		return nil, err
	}
	if err := w.Handle(TypeCurrent, a.current); err != nil {
		return nil, err
	}
	return a, nil
}

// Close stops writing answers (each ends UNAVAILABLE) and waits for the
// writers, or for ctx. Later asks get UNAVAILABLE.
func (a *Assistant) Close(ctx context.Context) error {
	a.writers.Stop()
	return a.writers.Wait(ctx)
}

type askReq struct {
	Question string `json:"question"`
}

func (a *Assistant) ask(ctx context.Context, m *worker.Message) error {
	var r askReq
	if err := m.Bind(&r); err != nil {
		return err
	}
	if len(r.Question) > MaxQuestionLen || strings.TrimSpace(r.Question) == "" || !utf8.ValidString(r.Question) {
		return rpc.Errorf(envelope.CodeInvalidArgument, "question must be 1..%d bytes of UTF-8, not only spaces", MaxQuestionLen)
	}
	if err := a.requireMember(ctx, m); err != nil {
		return err
	}
	if !a.reserve() {
		return rpc.Errorf(envelope.CodeResourceExhausted, "the assistant is busy with %d answers: ask again later", a.cfg.MaxAnswers)
	}
	s, err := m.OpenStream(ctx, worker.StreamTo{Room: Room})
	if err != nil {
		a.release()
		return err
	}
	ann := Announcement{Stream: s.ID(), Question: r.Question, User: m.User}
	env, err := envelope.New(TypeAnswer, ann)
	if err == nil {
		err = m.Publisher().ToRoom(Room, env)
	}
	if err != nil {
		a.release()
		_ = s.Fail(err)
		return err
	}
	a.mu.Lock()
	a.last = &ann
	a.mu.Unlock()
	words := Words(r.Question)
	if !a.writers.Go(func(ctx context.Context) {
		defer a.release()
		a.write(ctx, s, words)
	}) {
		a.release()
		err := rpc.Errorf(envelope.CodeUnavailable, "the assistant is shutting down")
		_ = s.Fail(err)
		return err
	}
	if m.IsRequest() {
		return m.Reply(TypeAsk, map[string]string{"stream": s.ID()})
	}
	return nil
}

func (a *Assistant) current(ctx context.Context, m *worker.Message) error {
	if !m.IsRequest() {
		return nil
	}
	if err := a.requireMember(ctx, m); err != nil {
		return err
	}
	var c Current
	a.mu.Lock()
	if a.last != nil {
		id := a.last.Stream
		c = Current{Stream: &id, Question: a.last.Question, User: a.last.User}
	}
	a.mu.Unlock()
	return m.Reply(TypeCurrent, c)
}

// requireMember lets only the room's members ask and look: the answers
// are the room's. Messages from services (no connection) may.
func (a *Assistant) requireMember(ctx context.Context, m *worker.Message) error {
	if m.Conn == "" {
		return nil
	}
	err := m.Publisher().RequireMember(ctx, m.Conn, Room)
	if errors.Is(err, rpc.ErrPermissionDenied) {
		return rpc.Errorf(envelope.CodePermissionDenied, "join room %s before asking", Room)
	}
	return err
}

func (a *Assistant) reserve() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.writing >= a.cfg.MaxAnswers {
		return false
	}
	a.writing++
	return true
}

func (a *Assistant) release() {
	a.mu.Lock()
	a.writing--
	a.mu.Unlock()
}

// write writes words to s, one per WordDelay, and ends the stream: done,
// CANCELLED when a reader cancelled it (the writer's Close says so), or
// UNAVAILABLE when the assistant closes (ctx).
func (a *Assistant) write(ctx context.Context, s *worker.StreamWriter, words []string) {
	tick := time.NewTicker(a.cfg.WordDelay)
	defer tick.Stop()
	var err error
	for _, w := range words {
		select {
		case <-ctx.Done():
			err = s.Fail(rpc.Errorf(envelope.CodeUnavailable, "the assistant stopped"))
		case <-s.Context().Done(): // cancelled, or the stream broke
		case <-tick.C:
			if _, err = s.WriteString(w); err == nil {
				continue
			}
		}
		break
	}
	if cerr := s.Close(); err == nil { // after Fail: Fail's result again
		err = cerr
	}
	if err != nil {
		a.cfg.Logger.Warn("assistant: answer not stored", "stream", s.ID(), "err", err)
	}
}
