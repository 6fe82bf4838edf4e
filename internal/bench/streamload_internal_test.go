package bench

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/natter/natter/pkg/envelope"
)

func TestChunkRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		t, n int64
		size int
	}{
		{"now, first", 1796000000123456789, 0, 32},
		{"small time is zero-padded", 42, 7, chunkHeadLen},
		{"large number", 1796000000123456789, 999_999_999, 64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := appendChunk([]byte("prefix"), tt.t, tt.n, tt.size)
			c = c[len("prefix"):]
			if len(c) != tt.size {
				t.Fatalf("chunk %q is %d bytes, want %d", c, len(c), tt.size)
			}
			for _, b := range c {
				if (b < '0' || b > '9') && b != '|' && b != 'x' {
					t.Fatalf("chunk %q has %q: JSON would escape it or it is not ASCII", c, b)
				}
			}
			gt, gn, ok := parseChunkHead(c)
			if !ok || gt != tt.t || gn != tt.n {
				t.Fatalf("parseChunkHead(%q) = %d, %d, %v", c, gt, gn, ok)
			}
		})
	}
}

func TestParseChunkHeadRefuses(t *testing.T) {
	good := string(appendChunk(nil, 1796000000123456789, 12, chunkHeadLen))
	for name, h := range map[string]string{
		"short":            good[:chunkHeadLen-1],
		"no first bar":     good[:chunkTimeLen] + "x" + good[chunkTimeLen+1:],
		"no second bar":    good[:chunkHeadLen-1] + "x",
		"letter in time":   "a" + good[1:],
		"letter in number": good[:chunkTimeLen+1] + "a" + good[chunkTimeLen+2:],
		"padding as head":  "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
	} {
		if _, _, ok := parseChunkHead([]byte(h)); ok {
			t.Errorf("%s: parseChunkHead(%q) ok", name, h)
		}
	}
}

// streamText is chunks from..to-1 of size bytes, chunk k sent at 1000+k.
func streamText(from, to int64, size int) []byte {
	var b []byte
	for k := from; k < to; k++ {
		b = appendChunk(b, 1000+k, k, size)
	}
	return b
}

type sentChunk struct{ t, n int64 }

// TestChunkClockCuts: however the text is cut into pieces (single bytes,
// inside heads, whole frames), every chunk is read once, in order, with
// its send time.
func TestChunkClockCuts(t *testing.T) {
	const size = 33
	text := streamText(0, 40, size)
	want := make([]sentChunk, 40)
	for k := range want {
		want[k] = sentChunk{1000 + int64(k), int64(k)}
	}
	r := rand.New(rand.NewPCG(1, 2))
	cuts := map[string]func(rest int) int{
		"whole":       func(rest int) int { return rest },
		"bytes":       func(int) int { return 1 },
		"chunks":      func(int) int { return size },
		"inside head": func(int) int { return size + 7 },
		"random":      func(rest int) int { return 1 + r.IntN(3*size) },
	}
	for name, cut := range cuts {
		t.Run(name, func(t *testing.T) {
			c := newChunkClock(size, 0)
			var got []sentChunk
			for at := 0; at < len(text); {
				k := min(cut(len(text)-at), len(text)-at)
				if !c.feed(int64(at), text[at:at+k], func(t, n int64) { got = append(got, sentChunk{t, n}) }) {
					t.Fatalf("piece at %d refused", at)
				}
				at += k
			}
			if !slices.Equal(got, want) || c.bad != 0 || c.pos != int64(len(text)) {
				t.Fatalf("got %v (bad %d, pos %d), want %v", got, c.bad, c.pos, want)
			}
		})
	}
}

// TestChunkClockFromOffset: a reader joined at a chunk's start reads
// from there; a piece that does not start where the last ended is
// refused and changes nothing.
func TestChunkClockFromOffset(t *testing.T) {
	const size = 30
	c := newChunkClock(size, 5*size)
	var got []int64
	fn := func(_, n int64) { got = append(got, n) }
	text := streamText(5, 8, size)
	if !c.feed(5*size, text[:40], fn) {
		t.Fatal("first piece refused")
	}
	if c.feed(5*size+41, text[41:], fn) {
		t.Fatal("a gap was accepted")
	}
	if c.feed(5*size+39, text[39:], fn) {
		t.Fatal("an overlap was accepted")
	}
	if !c.feed(5*size+40, text[40:], fn) {
		t.Fatal("the next piece was refused")
	}
	if !slices.Equal(got, []int64{5, 6, 7}) || c.bad != 0 {
		t.Fatalf("got %v, bad %d", got, c.bad)
	}
}

// TestChunkClockBad: a head that does not parse, or whose number is not
// its place in the text, is counted, not reported.
func TestChunkClockBad(t *testing.T) {
	const size = 30
	text := streamText(0, 3, size)
	copy(text[size:], appendChunk(nil, 5, 9, size)) // chunk 1 says it is 9
	text[2*size+chunkTimeLen] = 'x'                 // chunk 2's head is broken
	c := newChunkClock(size, 0)
	var got []int64
	c.feed(0, text, func(_, n int64) { got = append(got, n) })
	if !slices.Equal(got, []int64{0}) || c.bad != 2 {
		t.Fatalf("got %v, bad %d", got, c.bad)
	}
}

func encode(t *testing.T, e *envelope.Envelope) []byte {
	t.Helper()
	b, err := envelope.Encode(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func streamMeta(id string, offset int64) envelope.Meta {
	return envelope.Meta{Extra: map[string]json.RawMessage{
		"stream": json.RawMessage(strconv.Quote(id)),
		"offset": json.RawMessage(strconv.FormatInt(offset, 10)),
	}}
}

// TestParseStreamFrame reads frames as envelope.Encode writes them, the
// edge's one encoder.
func TestParseStreamFrame(t *testing.T) {
	chunk := func(text string, offset int64) []byte {
		p, _ := json.Marshal(text)
		return encode(t, &envelope.Envelope{Type: envelope.TypeStreamChunk, Meta: streamMeta("s1", offset), Payload: p})
	}
	end := encode(t, &envelope.Envelope{Type: envelope.TypeStreamEnd, Meta: streamMeta("s1", 1234), Payload: json.RawMessage(`{"status":"done"}`)})
	tests := []struct {
		name   string
		frame  []byte
		kind   int
		offset int64
		text   string
		ok     bool
	}{
		{"chunk", chunk("1234|5|xx", 42), frameChunk, 42, "1234|5|xx", true},
		{"chunk with escapes", chunk("a\"b\\c\n<é>", 99), frameChunk, 99, "a\"b\\c\n<é>", true},
		{"chunk whose text looks like keys", chunk(`,"payload":"x","offset":7`, 300), frameChunk, 300, `,"payload":"x","offset":7`, true},
		{"end", end, frameEnd, 1234, string(end), true},
		{"joined", encode(t, &envelope.Envelope{Type: envelope.TypeStreamJoined, Meta: envelope.Meta{CorrelationID: "sj"}, Payload: json.RawMessage(`{"stream":"s1","offset":0,"to":{"user":"u1"}}`)}), frameJoined, 0, "", true},
		{"error", envelope.EncodeError("", &envelope.ErrorPayload{Code: envelope.CodeInvalidArgument, Message: "bad frame"}), frameError, 0, "", true},
		{"join refused", envelope.EncodeError("sj", &envelope.ErrorPayload{Code: envelope.CodeNotFound, Message: "stream s1 not found"}), frameError, 0, "", true},
		{"connected", encode(t, &envelope.Envelope{Type: envelope.TypeConnected, Payload: json.RawMessage(`{"connectionId":"e.1"}`)}), frameOther, 0, "", true},
		{"chunk without offset", encode(t, &envelope.Envelope{Type: envelope.TypeStreamChunk, Payload: json.RawMessage(`"x"`)}), frameChunk, 0, "", false},
		{"chunk without text", encode(t, &envelope.Envelope{Type: envelope.TypeStreamChunk, Meta: streamMeta("s1", 1)}), frameChunk, 0, "", false},
		{"chunk whose payload is not a string", encode(t, &envelope.Envelope{Type: envelope.TypeStreamChunk, Meta: streamMeta("s1", 1), Payload: json.RawMessage(`{"a":1}`)}), frameChunk, 0, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, ok := parseStreamFrame(tt.frame)
			if ok != tt.ok || f.kind != tt.kind {
				t.Fatalf("parseStreamFrame(%s) = %+v, %v", tt.frame, f, ok)
			}
			if !ok {
				return
			}
			if f.offset != tt.offset || (tt.kind == frameChunk || tt.kind == frameEnd) && string(f.text) != tt.text {
				t.Fatalf("parseStreamFrame(%s) = offset %d text %q, want %d %q", tt.frame, f.offset, f.text, tt.offset, tt.text)
			}
		})
	}
}

func TestStreamJoinFrame(t *testing.T) {
	b := streamJoinFrame("AbC_1-2", 320000)
	env, err := envelope.Decode(b, 1<<20)
	if err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	var q envelope.StreamQuery
	if err := json.Unmarshal(env.Payload, &q); err != nil {
		t.Fatal(err)
	}
	if env.Type != envelope.TypeStreamJoin || env.Meta.CorrelationID == "" || q != (envelope.StreamQuery{Stream: "AbC_1-2", Offset: 320000}) {
		t.Fatalf("%s decodes as %+v, %+v", b, env, q)
	}
}

func TestWithUser(t *testing.T) {
	for in, want := range map[string]string{
		"ws://127.0.0.1:8080/ws":       "ws://127.0.0.1:8080/ws?user=u7",
		"ws://127.0.0.1:8080/ws?a=b":   "ws://127.0.0.1:8080/ws?a=b&user=u7",
		"ws://127.0.0.1:8080/ws/?a=b&": "ws://127.0.0.1:8080/ws/?a=b&&user=u7",
	} {
		if got := withUser(in, "u7"); got != want {
			t.Errorf("withUser(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestStreamLoadDefaults(t *testing.T) {
	var s StreamLoad
	if err := s.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if want := (StreamLoad{Streams: 1000, ChunkRate: 50, ChunkSize: 32, Behind: 10000, Joins: 200}); s != want {
		t.Fatalf("defaults %+v, want %+v", s, want)
	}
	for name, bad := range map[string]StreamLoad{
		"negative streams": {Streams: -1},
		"chunk too small":  {ChunkSize: chunkHeadLen - 1},
		"chunk too large":  {ChunkSize: 64<<10 + 1},
		"negative read":    {Read: -1},
		"negative joins":   {Joins: -5},
	} {
		if err := bad.setDefaults(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
}

func TestStoreMax(t *testing.T) {
	var v atomic.Int64
	for _, x := range []int64{3, 1, 7, 7, 2} {
		storeMax(&v, x)
	}
	if got := v.Load(); got != 7 {
		t.Fatalf("max %d, want 7", got)
	}
}
