package client

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/natter/natter/pkg/envelope"
	"github.com/natter/natter/pkg/rpc"
)

// Chunk is a piece of a response stream's text. Offset is the byte offset
// after it: the position to join from next time (Stream's offset).
type Chunk struct {
	Text   string
	Offset int64
}

// Stream reads one response stream (docs/protocol.md, "Response
// streams"): its text from the offset it was joined at, then live, until
// its end. After a reconnect the client joins it again from the last
// offset it got, so Next sees no gap and no duplicate. Chunks wait in
// memory until Next takes them.
type Stream struct {
	c  *Client
	id string

	mu     sync.Mutex
	ready  chan struct{} // signalled when chunks or the end arrive
	chunks []Chunk
	offset int64 // the end of the last chunk received
	end    error // io.EOF for done, an *rpc.Error for an error end; nil: not ended
	left   bool
	// live: the edge acknowledged this Stream's join; frames before that
	// belong to an earlier read of the same id (one Closed just now).
	live bool
}

// Stream joins response stream id from byte offset (0: its start) and
// returns its reader. It fails with the edge's error: NOT_FOUND,
// PERMISSION_DENIED (the stream is another user's, another room's or
// another connection's), ALREADY_EXISTS (this client reads it already).
func (c *Client) Stream(ctx context.Context, id string, offset int64) (*Stream, error) {
	if err := envelope.ValidateID(id); err != nil {
		return nil, err
	}
	st := &Stream{c: c, id: id, offset: offset, ready: make(chan struct{}, 1)}
	c.mu.Lock()
	if c.streams == nil {
		c.streams = map[string]*Stream{}
	}
	if c.streams[id] != nil {
		c.mu.Unlock()
		return nil, &rpc.Error{Code: envelope.CodeAlreadyExists, Message: "stream " + id + " is read already"}
	}
	c.streams[id] = st
	c.mu.Unlock()
	if err := st.join(ctx); err != nil {
		c.forgetStream(st)
		var re *rpc.Error
		if !errors.As(err, &re) {
			// Given up before the edge answered: it may join later.
			_ = c.Send(envelope.TypeStreamLeave, envelope.StreamQuery{Stream: id})
		}
		return nil, err
	}
	return st, nil
}

func (st *Stream) join(ctx context.Context) error {
	st.mu.Lock()
	offset := st.offset
	st.mu.Unlock()
	env, err := st.c.request(ctx, envelope.TypeStreamJoin, envelope.StreamQuery{Stream: st.id, Offset: offset}, &callOpts{}, nil)
	if err != nil {
		return err
	}
	return replyError(env)
}

// ID is the stream's id.
func (st *Stream) ID() string { return st.id }

// Offset is the byte offset after the last chunk received: where a later
// join (another process, after a restart) continues from.
func (st *Stream) Offset() int64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.offset
}

// Next returns the next chunk. At the stream's end it returns io.EOF when
// it ended done, or the producer's error (an *rpc.Error: CANCELLED after a
// cancel, UNAVAILABLE when the producer was gone). After Close it returns
// ErrStreamClosed.
func (st *Stream) Next(ctx context.Context) (Chunk, error) {
	for {
		st.mu.Lock()
		switch {
		case len(st.chunks) > 0:
			ch := st.chunks[0]
			st.chunks = st.chunks[1:]
			st.mu.Unlock()
			return ch, nil
		case st.end != nil:
			err := st.end
			st.mu.Unlock()
			return Chunk{}, err
		case st.left:
			st.mu.Unlock()
			return Chunk{}, ErrStreamClosed
		}
		st.mu.Unlock()
		select {
		case <-st.ready:
		case <-ctx.Done():
			return Chunk{}, ctx.Err()
		case <-st.c.ctx.Done():
			return Chunk{}, closedError()
		}
	}
}

// Text reads the rest of the stream: the text up to a done end, or what
// came before an error end with the error.
func (st *Stream) Text(ctx context.Context) (string, error) {
	var b strings.Builder
	for {
		ch, err := st.Next(ctx)
		if errors.Is(err, io.EOF) {
			return b.String(), nil
		}
		if err != nil {
			return b.String(), err
		}
		b.WriteString(ch.Text)
	}
}

// Cancel asks the stream's producer to stop; the stream then ends with
// CANCELLED (Next's error). Any reader allowed to join may cancel.
func (st *Stream) Cancel(ctx context.Context) error {
	env, err := st.c.request(ctx, envelope.TypeStreamCancel, envelope.StreamQuery{Stream: st.id}, &callOpts{}, nil)
	if err != nil {
		return err
	}
	return replyError(env)
}

// Close stops reading the stream (without cancelling it: others may read
// on): the edge is told to leave it, and Next returns ErrStreamClosed.
func (st *Stream) Close() {
	st.mu.Lock()
	ended := st.end != nil
	st.left = true
	st.mu.Unlock()
	st.signal()
	if st.c.forgetStream(st) && !ended {
		_ = st.c.Send(envelope.TypeStreamLeave, envelope.StreamQuery{Stream: st.id})
	}
}

// ErrStreamClosed is the error of a Stream's Next after its Close.
var ErrStreamClosed = errors.New("client: stream closed")

func (st *Stream) signal() {
	select {
	case st.ready <- struct{}{}:
	default:
	}
}

// forgetStream removes st from the streams read; false if it was not
// there.
func (c *Client) forgetStream(st *Stream) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.streams[st.id] != st {
		return false
	}
	delete(c.streams, st.id)
	return true
}

// routeStream hands a $stream.chunk or $stream.end to its stream.
func (c *Client) routeStream(env *envelope.Envelope) {
	var id string
	var offset int64
	if json.Unmarshal(env.Meta.Extra["stream"], &id) != nil || json.Unmarshal(env.Meta.Extra["offset"], &offset) != nil {
		return
	}
	c.mu.Lock()
	st := c.streams[id]
	c.mu.Unlock()
	if st == nil {
		return
	}
	st.mu.Lock()
	if st.end != nil || st.left || !st.live {
		st.mu.Unlock()
		return
	}
	if env.Type == envelope.TypeStreamChunk {
		var text string
		// A chunk at or before the offset was seen before a re-join.
		if json.Unmarshal(env.Payload, &text) == nil && offset > st.offset {
			st.chunks = append(st.chunks, Chunk{Text: text, Offset: offset})
			st.offset = offset
		}
	} else {
		var end envelope.StreamEnd
		_ = json.Unmarshal(env.Payload, &end)
		if end.Status == envelope.StreamDone {
			st.end = io.EOF
		} else {
			p := end.Error
			if p == nil {
				p = &envelope.ErrorPayload{Code: envelope.CodeInternal, Message: "stream ended with an error"}
			}
			st.end = &rpc.Error{Code: p.Code, Message: p.Message}
		}
	}
	st.mu.Unlock()
	st.signal()
	if env.Type == envelope.TypeStreamEnd {
		c.forgetStream(st)
	}
}

// streamJoined marks the stream a $stream.joined names live, on the
// session's read goroutine, before the frames that follow it.
func (c *Client) streamJoined(env *envelope.Envelope) {
	var p envelope.StreamJoined
	if json.Unmarshal(env.Payload, &p) != nil {
		return
	}
	c.mu.Lock()
	st := c.streams[p.Stream]
	c.mu.Unlock()
	if st != nil {
		st.mu.Lock()
		st.live = true
		st.mu.Unlock()
	}
}

// rejoinStreams joins every stream not ended again, from its offset,
// after a reconnect; UNAVAILABLE is retried, other refusals end the
// stream with that error.
func (c *Client) rejoinStreams() {
	c.mu.Lock()
	all := make([]*Stream, 0, len(c.streams))
	for _, st := range c.streams {
		all = append(all, st)
	}
	c.mu.Unlock()
	for _, st := range all {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			for {
				err := st.join(c.ctx)
				var re *rpc.Error
				switch {
				case err == nil, c.ctx.Err() != nil:
					return
				case !errors.As(err, &re):
					return // the session ended: the next one joins again
				case re.Code == envelope.CodeAlreadyExists:
					return // joined on this connection already
				case re.Code != envelope.CodeUnavailable && re.Code != envelope.CodeDeadlineExceeded:
					st.mu.Lock()
					if st.end == nil {
						st.end = err
					}
					st.mu.Unlock()
					st.signal()
					c.forgetStream(st)
					return
				}
				if !c.sleep(time.Second) {
					return
				}
			}
		}()
	}
}
