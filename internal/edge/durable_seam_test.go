package edge

// Unit tests of durable rooms' pure logic, without NATS or sockets: the
// completeness check of a join from a position (roomState.complete), and
// the seam between a member's replay and its live delivery (roomLog and
// recovery, durable_join.go). The tests in durable_test.go run the same
// paths through real edges and a real stream.

import (
	"fmt"
	"slices"
	"strconv"
	"testing"
)

func TestRoomStateComplete(t *testing.T) {
	t.Parallel()
	// A stream of sequences first..last; the room holds count of them, the
	// oldest at firstRoom (0: none, or not read), and keeps at most
	// roomLimit (-1 and 0: no limit).
	tests := []struct {
		name  string
		st    roomState
		since uint64
		want  bool
	}{
		{"since past the stream's last", roomState{first: 1, last: 10, count: 3, firstRoom: 2, roomLimit: 1000}, 11, false},
		{"since far past the stream's last", roomState{first: 1, last: 10, count: 3, firstRoom: 2, roomLimit: -1}, 1 << 63, false},
		{"since past the last of an empty stream", roomState{}, 1, false},
		{"since 0 in an empty stream", roomState{}, 0, true},
		{"since at the stream's last", roomState{first: 1, last: 10, count: 3, firstRoom: 2, roomLimit: 1000}, 10, true},

		{"room holds a message before since", roomState{first: 50, last: 100, count: 3, firstRoom: 60, roomLimit: 3}, 70, true},
		{"room holds the message at since", roomState{first: 50, last: 100, count: 3, firstRoom: 70, roomLimit: 3}, 70, true},
		{"room's oldest message just after since", roomState{first: 50, last: 100, count: 3, firstRoom: 71, roomLimit: 3}, 70, false},
		{"room holds one at since though the stream lost older ones", roomState{first: 70, last: 100, count: 5, firstRoom: 70, roomLimit: 5}, 70, true},

		{"under the room's limit, nothing removed after since", roomState{first: 5, last: 100, count: 9, firstRoom: 20, roomLimit: 10}, 10, true},
		{"under the room's limit, the room's first not read", roomState{first: 5, last: 100, count: 9, roomLimit: 10}, 10, true},
		{"under the room's limit, the stream's first is since+1", roomState{first: 11, last: 100, count: 9, firstRoom: 20, roomLimit: 10}, 10, true},
		{"under the room's limit, the stream's first past since+1", roomState{first: 12, last: 100, count: 9, firstRoom: 20, roomLimit: 10}, 10, false},
		{"empty room, nothing removed after since", roomState{first: 1, last: 100, roomLimit: 10}, 40, true},
		{"empty room, the stream's first past since+1", roomState{first: 60, last: 100, roomLimit: 10}, 40, false},
		{"from the start of an untrimmed stream", roomState{first: 1, last: 100, count: 4, firstRoom: 3, roomLimit: 10}, 0, true},

		{"at the room's limit", roomState{first: 5, last: 100, count: 10, firstRoom: 20, roomLimit: 10}, 10, false},
		{"at the room's limit, the room's first not read", roomState{first: 1, last: 100, count: 10, roomLimit: 10}, 10, false},
		{"at the room's limit but holding since", roomState{first: 5, last: 100, count: 10, firstRoom: 10, roomLimit: 10}, 10, true},
		{"over the room's limit (lowered since)", roomState{first: 5, last: 100, count: 12, firstRoom: 20, roomLimit: 10}, 10, false},

		{"unlimited room (-1)", roomState{first: 5, last: 1 << 20, count: 1 << 19, firstRoom: 20, roomLimit: -1}, 10, true},
		{"unlimited room (0)", roomState{first: 5, last: 1 << 20, count: 1 << 19, firstRoom: 20, roomLimit: 0}, 10, true},
		{"unlimited room, the stream's first past since+1", roomState{first: 12, last: 100, count: 50, firstRoom: 20, roomLimit: -1}, 10, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.st.complete(tt.since); got != tt.want {
				t.Errorf("%+v.complete(%d) = %v, want %v", tt.st, tt.since, got, tt.want)
			}
		})
	}
}

// seam drives a durable room's log as the edge does, under what would be
// group.mu: live does what deliverStored does with a republish or a
// backfilled message, join and leave what hub.addLocked and
// hub.removeLocked do, round stands for a round of fetch in durable.join,
// and finish is durable.finish. A frame's bytes are its sequence, so that
// the test can read what each member got.
type seam struct {
	t       *testing.T
	log     *roomLog
	limit   int // WriteQueueBytes
	members map[*conn]bool
	got     map[*conn][]uint64
	lives   []uint64 // the sequences delivered live, in order
}

func newSeam(t *testing.T, limit int, members ...*conn) *seam {
	s := &seam{t: t, log: &roomLog{recovering: make(map[*conn]*recovery)}, limit: limit, members: make(map[*conn]bool), got: make(map[*conn][]uint64)}
	for _, c := range members {
		s.members[c] = false
	}
	return s
}

// frameOf is the frame of seq: four bytes, so that a test counts the
// buffer's bytes in messages.
func frameOf(seq uint64) *outFrame { return &outFrame{text: fmt.Appendf(nil, "%04d", seq)} }

func (s *seam) live(seqs ...uint64) {
	for _, seq := range seqs {
		if !s.log.advance(seq) {
			continue
		}
		s.lives = append(s.lives, seq)
		for c := range s.members {
			if s.log.admit(c, seq, frameOf(seq), s.limit) {
				s.got[c] = append(s.got[c], seq)
			}
		}
	}
}

func (s *seam) join(c *conn) *recovery {
	s.members[c] = false
	r := &recovery{}
	s.log.recovering[c] = r
	return r
}

func (s *seam) leave(c *conn) {
	delete(s.members, c)
	delete(s.log.recovering, c)
	delete(s.log.floor, c)
}

// round is one round of the join's replay: the stored messages from..to
// sent to c, as a fetch does (to is the stream's end when its read
// started), then r.again, which must say whether another round follows.
func (s *seam) round(c *conn, r *recovery, from, to uint64, wantAgain bool) {
	s.t.Helper()
	for seq := from; seq <= to; seq++ {
		s.got[c] = append(s.got[c], seq)
	}
	if again := r.again(); again != wantAgain {
		s.t.Errorf("after the round %d..%d: again %v, want %v", from, to, again, wantAgain)
	}
}

func (s *seam) finish(c *conn, r *recovery, last uint64) bool {
	frames, ok := s.log.release(c, r, last)
	for _, f := range frames {
		seq, err := strconv.ParseUint(string(f.text), 10, 64)
		if err != nil {
			s.t.Fatalf("released frame %q: %v", f.text, err)
		}
		s.got[c] = append(s.got[c], seq)
	}
	return ok
}

// seqs is from..to.
func seqs(from, to uint64) []uint64 {
	var out []uint64
	for seq := from; seq <= to; seq++ {
		out = append(out, seq)
	}
	return out
}

// TestRecoverySeam checks the hand-over from a replay to live delivery:
// after a replay to last, a member gets the buffered live messages past
// last exactly once and none at or before it, later live messages in
// order, and nothing the replay already gave it. Member b, never
// recovering, gets every live message once, whatever a does.
func TestRecoverySeam(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		limit int // bytes a recovery buffers: 4 a message
		// run drives the seam with a joining at since 2 of a stream that
		// holds the room's messages 1..4, all delivered live already.
		run func(s *seam, a *conn) (finished []bool)
		// wantA is what a gets after its join, replayed and live;
		// wantOK what each finish returned.
		wantA  []uint64
		wantOK []bool
	}{
		{
			name: "nothing live during the replay", limit: 1 << 10,
			run: func(s *seam, a *conn) []bool {
				r := s.join(a)
				s.round(a, r, 3, 4, false)
				ok := s.finish(a, r, 4)
				s.live(5, 6)
				return []bool{ok}
			},
			wantA:  seqs(3, 6),
			wantOK: []bool{true},
		},
		{
			name: "buffered at or before last dropped, past last released once", limit: 1 << 10,
			run: func(s *seam, a *conn) []bool {
				r := s.join(a)
				s.live(5) // buffered, and read by the replay too
				s.round(a, r, 3, 5, false)
				s.live(6, 6, 7) // buffered after the replay's read; 6 repeated
				ok := s.finish(a, r, 5)
				s.live(7, 8) // 7 again: dropped
				return []bool{ok}
			},
			wantA:  seqs(3, 8),
			wantOK: []bool{true},
		},
		{
			name: "replay ends past the chain: the late republishes skipped", limit: 1 << 10,
			run: func(s *seam, a *conn) []bool {
				r := s.join(a)
				s.round(a, r, 3, 6, false) // 5 and 6 stored, not yet republished
				ok := s.finish(a, r, 6)
				if f, in := s.log.floor[a]; !in || f != 6 {
					s.t.Errorf("floor[a] = %d, %v; want 6", f, in)
				}
				s.live(5, 6, 7)
				if _, in := s.log.floor[a]; in {
					s.t.Error("floor[a] kept after a live message past it")
				}
				s.live(8)
				return []bool{ok}
			},
			wantA:  seqs(3, 8),
			wantOK: []bool{true},
		},
		{
			name: "a republish lost during the replay, backfilled after", limit: 1 << 10,
			run: func(s *seam, a *conn) []bool {
				r := s.join(a)
				s.live(5) // buffered; the republishes of 6 and 7 are lost
				s.round(a, r, 3, 7, false)
				ok := s.finish(a, r, 7)
				// 8 shows the hole: the edge backfills 6 and 7 first.
				s.live(6, 7, 8)
				return []bool{ok}
			},
			wantA:  seqs(3, 8),
			wantOK: []bool{true},
		},
		{
			name: "overflow: the buffer dropped, the replay goes another round", limit: 8,
			run: func(s *seam, a *conn) []bool {
				r := s.join(a)
				s.live(5, 6, 7, 8) // 7 overflows; 8 is not kept either
				if len(r.buf) != 0 || r.bytes != 0 || !r.overflow {
					s.t.Errorf("after overflow: %d buffered (%d bytes), overflow %v", len(r.buf), r.bytes, r.overflow)
				}
				s.round(a, r, 3, 8, true)
				s.live(9) // buffered in the second round
				s.round(a, r, 9, 9, false)
				s.live(10)
				ok := s.finish(a, r, 9)
				s.live(11)
				return []bool{ok}
			},
			wantA:  seqs(3, 11),
			wantOK: []bool{true},
		},
		{
			name: "overflow in two rounds, then exactly at the limit", limit: 4,
			run: func(s *seam, a *conn) []bool {
				r := s.join(a)
				s.live(5, 6)
				s.round(a, r, 3, 6, true)
				s.live(7, 8)
				s.round(a, r, 7, 8, true)
				s.live(9) // 4 bytes, the limit: kept
				s.round(a, r, 9, 9, false)
				ok := s.finish(a, r, 9)
				s.live(10)
				return []bool{ok}
			},
			wantA:  seqs(3, 10),
			wantOK: []bool{true},
		},
		{
			name: "left during the replay", limit: 1 << 10,
			run: func(s *seam, a *conn) []bool {
				r := s.join(a)
				s.live(5)
				s.round(a, r, 3, 5, false)
				s.leave(a)
				s.live(6)
				ok := s.finish(a, r, 5)
				s.live(7)
				return []bool{ok}
			},
			wantA:  seqs(3, 5), // the replay only: no release, no live
			wantOK: []bool{false},
		},
		{
			name: "left and joined again during the replay", limit: 1 << 10,
			run: func(s *seam, a *conn) []bool {
				r1 := s.join(a)
				s.live(5)
				s.round(a, r1, 3, 5, false)
				s.leave(a)
				r2 := s.join(a) // from since 4 this time
				s.live(6)
				ok1 := s.finish(a, r1, 5) // must not end r2
				if s.log.recovering[a] != r2 {
					s.t.Error("the first join's finish ended the second's recovery")
				}
				s.live(7) // buffered in r2
				s.round(a, r2, 5, 6, false)
				ok2 := s.finish(a, r2, 6)
				s.live(8)
				return []bool{ok1, ok2}
			},
			wantA:  []uint64{3, 4, 5 /* first join */, 5, 6 /* second replay */, 7 /* released */, 8},
			wantOK: []bool{false, true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a, b := &conn{id: "a"}, &conn{id: "b"}
			s := newSeam(t, tt.limit, b)
			s.live(1, 2, 3, 4)
			s.got[b] = nil
			s.lives = nil
			finished := tt.run(s, a)

			if !slices.Equal(s.got[a], tt.wantA) {
				t.Errorf("a got %v, want %v", s.got[a], tt.wantA)
			}
			if !slices.Equal(s.got[b], s.lives) {
				t.Errorf("b got %v, want every live message once: %v", s.got[b], s.lives)
			}
			if !slices.Equal(finished, tt.wantOK) {
				t.Errorf("finish returned %v, want %v", finished, tt.wantOK)
			}
			if len(s.log.recovering) != 0 {
				t.Errorf("%d recoveries left", len(s.log.recovering))
			}
		})
	}
}
