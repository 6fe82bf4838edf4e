package bench

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Field is one key=value of a result line. Numeric values are a number
// followed by an optional unit (12.5ms, 100/s, 10s).
type Field struct {
	Key, Value string
}

// Result is the outcome of one run of one scenario against one server: the
// fields of its line, in order.
type Result struct {
	Scenario string
	Server   string // "natter" or "floor"
	Fields   []Field
	// Latencies of the run, sorted: round trips for rpc (fixed-rate phase),
	// publish-to-delivery for fanout; empty for idle and median lines.
	Latencies []time.Duration
}

// String returns the result line, without a newline.
func (r *Result) String() string {
	var b strings.Builder
	for i, f := range r.Fields {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(f.Key)
		b.WriteByte('=')
		b.WriteString(f.Value)
	}
	return b.String()
}

// Get returns the value of key, or "".
func (r *Result) Get(key string) string {
	for _, f := range r.Fields {
		if f.Key == key {
			return f.Value
		}
	}
	return ""
}

// Number returns the numeric part of key's value (12.5 for "12.5ms").
func (r *Result) Number(key string) (float64, bool) {
	n, _, _, ok := splitNumber(r.Get(key))
	return n, ok
}

// Percentile returns the p-th percentile (0..100) of the latencies.
func (r *Result) Percentile(p float64) time.Duration {
	return percentile(r.Latencies, p)
}

// percentile returns the p-th percentile (0..100) of sorted, nearest rank
// rounded down.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(float64(len(sorted)-1)*p/100)]
}

// line builds a result's fields.
type line struct{ fields []Field }

func (l *line) add(key, value string)   { l.fields = append(l.fields, Field{key, value}) }
func (l *line) int(key string, v int64) { l.add(key, strconv.FormatInt(v, 10)) }
func (l *line) num(key string, v float64, decimals int, unit string) {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		l.add(key, "NaN")
		return
	}
	l.add(key, strconv.FormatFloat(v, 'f', decimals, 64)+unit)
}

// ms adds a duration in milliseconds with microsecond precision.
func (l *line) ms(key string, d time.Duration) {
	l.num(key, float64(d.Microseconds())/1000, 3, "ms")
}

// splitNumber splits "12.50ms" into 12.5, "ms" and 2 decimals.
func splitNumber(v string) (n float64, unit string, decimals int, ok bool) {
	end := 0
	if end < len(v) && v[end] == '-' {
		end++
	}
	digits, dot := 0, -1
	for end < len(v) {
		c := v[end]
		if c >= '0' && c <= '9' {
			digits++
		} else if c == '.' && dot < 0 {
			dot = end
		} else {
			break
		}
		end++
	}
	if digits == 0 {
		return 0, "", 0, false
	}
	n, err := strconv.ParseFloat(v[:end], 64)
	if err != nil {
		return 0, "", 0, false
	}
	if dot >= 0 {
		decimals = end - dot - 1
	}
	return n, v[end:], decimals, true
}

// Median returns the line of medians of runs of one scenario and server:
// each numeric field is the median of the runs' values (the mean of the
// middle two for an even count), fields equal in all runs are kept, run is
// "median" and runs the count. Fields follow the first run's order.
func Median(runs []*Result) *Result {
	if len(runs) == 0 {
		return nil
	}
	first := runs[0]
	m := &Result{Scenario: first.Scenario, Server: first.Server}
	for _, f := range first.Fields {
		switch f.Key {
		case "run":
			m.Fields = append(m.Fields, Field{"run", "median"}, Field{"runs", strconv.Itoa(len(runs))})
			continue
		}
		vals := make([]float64, 0, len(runs))
		unit, decimals, numeric, same := "", 0, true, true
		for i, r := range runs {
			v := r.Get(f.Key)
			same = same && v == f.Value
			n, u, d, ok := splitNumber(v)
			if !ok || (i > 0 && u != unit) {
				numeric = false
				continue
			}
			unit, decimals = u, max(decimals, d)
			vals = append(vals, n)
		}
		switch {
		case same:
			m.Fields = append(m.Fields, f)
		case numeric:
			slices.Sort(vals)
			med := vals[len(vals)/2]
			if len(vals)%2 == 0 {
				med = (vals[len(vals)/2-1] + vals[len(vals)/2]) / 2
				if decimals == 0 && med != math.Trunc(med) {
					decimals = 1
				}
			}
			m.Fields = append(m.Fields, Field{f.Key, strconv.FormatFloat(med, 'f', decimals, 64) + unit})
		default:
			m.Fields = append(m.Fields, Field{f.Key, "mixed"})
		}
	}
	return m
}

// ParseResult parses a result line as String writes it: space-separated
// key=value fields, among them scenario and server (in any place, so that
// a script may put fields of its own first).
func ParseResult(s string) (*Result, error) {
	r := &Result{}
	for f := range strings.FieldsSeq(s) {
		k, v, ok := strings.Cut(f, "=")
		if !ok || k == "" || v == "" {
			return nil, fmt.Errorf("bench: result line: field %q is not key=value", f)
		}
		if r.Get(k) != "" {
			return nil, fmt.Errorf("bench: result line: %s twice", k)
		}
		r.Fields = append(r.Fields, Field{k, v})
		switch k {
		case "scenario":
			r.Scenario = v
		case "server":
			r.Server = v
		}
	}
	if r.Scenario == "" || r.Server == "" {
		return nil, fmt.Errorf("bench: result line %q has no scenario or server", s)
	}
	return r, nil
}

// MedianLines reads result lines from r, one per run, and writes to w the
// median line (see Median) of each scenario, server and wire, in the order they
// first appear. Empty lines, lines starting with # and median lines
// (run=median) are skipped. It is for runs made by separate bench
// processes, such as those scripts/bench.sh makes against a fresh edge
// each.
func MedianLines(r io.Reader, w io.Writer) error {
	type group struct {
		key  string
		runs []*Result
	}
	var groups []*group
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		res, err := ParseResult(s)
		if err != nil {
			return err
		}
		if res.Get("run") == "median" {
			continue
		}
		key := res.Scenario + " " + res.Server + " " + res.Get("wire")
		i := slices.IndexFunc(groups, func(g *group) bool { return g.key == key })
		if i < 0 {
			i = len(groups)
			groups = append(groups, &group{key: key})
		}
		groups[i].runs = append(groups[i].runs, res)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("bench: read result lines: %w", err)
	}
	for _, g := range groups {
		if _, err := fmt.Fprintln(w, Median(g.runs)); err != nil {
			return err
		}
	}
	return nil
}
