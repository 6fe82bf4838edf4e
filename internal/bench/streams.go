package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// streamsTimeout bounds one listing of every stream's state.
const streamsTimeout = 10 * time.Second

// streamReader reads the last sequence of every JetStream stream of the
// account it connects as.
type streamReader struct {
	nc *nats.Conn
	js jetstream.JetStream
}

func newStreamReader(natsURL string) (*streamReader, error) {
	nc, err := nats.Connect(natsURL, nats.Name("natter-bench"), nats.Timeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("bench: connect NATS %s (-nats: the edge's NATS, in single-binary mode its --nats-listen): %w", natsURL, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("bench: jetstream: %w", err)
	}
	return &streamReader{nc: nc, js: js}, nil
}

func (r *streamReader) Close() { r.nc.Close() }

// errNoJetStream means the account has no JetStream: nothing can be
// written to a stream, and the snapshot is empty.
var errNoJetStream = errors.New("bench: no JetStream")

// lastSeqs returns every stream's State.LastSeq by name.
func (r *streamReader) lastSeqs(ctx context.Context) (map[string]uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, streamsTimeout)
	defer cancel()
	l := r.js.ListStreams(ctx)
	seqs := map[string]uint64{}
	for info := range l.Info() {
		seqs[info.Config.Name] = info.State.LastSeq
	}
	switch err := l.Err(); {
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return map[string]uint64{}, fmt.Errorf("%w: %v", errNoJetStream, err)
	case err != nil:
		return nil, fmt.Errorf("bench: list JetStream streams: %w", err)
	}
	return seqs, nil
}

// streamCount is the messages one stream took in a window.
type streamCount struct {
	name   string
	writes uint64
}

// streamWrites returns, sorted by name, how many messages each stream took
// between two snapshots of last sequences: the change of its LastSeq. A
// stream's sequence counts every message stored (expired, deleted and
// purged ones too, and the server's own markers), so this is what was
// written whatever was removed since. A stream created in the window
// counts from 0; one whose LastSeq went down was deleted and created again
// and counts its new LastSeq. Streams deleted in the window cannot be
// counted and are returned in gone.
func streamWrites(before, after map[string]uint64) (counts []streamCount, total uint64, gone []string) {
	for name, last := range after {
		first := before[name] // 0 when created in the window
		if last < first {
			first = 0
		}
		counts = append(counts, streamCount{name, last - first})
		total += last - first
	}
	for name := range before {
		if _, ok := after[name]; !ok {
			gone = append(gone, name)
		}
	}
	slices.SortFunc(counts, func(a, b streamCount) int { return strings.Compare(a.name, b.name) })
	slices.Sort(gone)
	return counts, total, gone
}

// streamKey is the result field of a stream's count: js_writes_ and the
// stream's name in lower case with every byte other than a-z, 0-9 and _
// as _ (KV_natter_presence: js_writes_kv_natter_presence).
func streamKey(name string) string {
	b := []byte("js_writes_" + strings.ToLower(name))
	for i := len("js_writes_"); i < len(b); i++ {
		if c := b[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			b[i] = '_'
		}
	}
	return string(b)
}

// streamFields adds the per-stream counts to l, one field each; streams
// whose keys coincide are added up (the sum of counts is what a key
// means) and returned in merged.
func streamFields(l *line, counts []streamCount) (merged []string) {
	idx := map[string]int{}
	var keys []string
	var vals []uint64
	var names [][]string
	for _, c := range counts {
		k := streamKey(c.name)
		i, ok := idx[k]
		if !ok {
			i = len(keys)
			idx[k] = i
			keys, vals, names = append(keys, k), append(vals, 0), append(names, nil)
		}
		vals[i] += c.writes
		names[i] = append(names[i], c.name)
	}
	for i, k := range keys {
		l.int(k, int64(vals[i]))
		if len(names[i]) > 1 {
			merged = append(merged, k+": "+strings.Join(names[i], ", "))
		}
	}
	return merged
}
