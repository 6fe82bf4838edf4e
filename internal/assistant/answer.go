package assistant

import (
	"hash/fnv"
	"strings"
)

// The generator's vocabulary. A few words are not ASCII on purpose: stream
// positions are byte offsets, and a reader resuming from one must never
// split a character.
var (
	openers = []string{
		"In short,", "Put simply,", "First of all,", "On the other hand,", "In practice,",
		"To be fair,", "Seen from afar,", "More precisely,", "As a rule,", "Then again,",
	}
	subjects = []string{
		"the mesh", "every edge", "a durable room", "the worker", "each stream", "the client",
		"a café full of tabs", "the naïve approach", "NATS", "JetStream", "the rollup", "a reader",
	}
	verbs = []string{
		"keeps", "forwards", "stores", "replays", "resumes", "joins", "orders", "bounds",
		"splits", "merges", "counts", "acknowledges", "answers", "remembers",
	}
	objects = []string{
		"every chunk", "the byte offset", "its façade", "the last position", "a reconnect",
		"the whole text", "one message", "the room's members", "a slow reader", "the producer",
		"each tab", "the question", "a déjà vu", "the end",
	}
	tails = []string{
		"without a gap", "in order", "exactly once", "after a reload", "across edges",
		"while it is being written", "long after the fact", "for every member", "at its own pace",
		"— and nothing else", "with a pause between words", "as promised",
	}
)

// Words is the answer to question as the pieces it is written in: each a
// word with the space or line break after it. Their concatenation is
// Answer(question).
func Words(question string) []string {
	h := fnv.New64a()
	h.Write([]byte(question))
	r := rng(h.Sum64())
	var words []string
	add := func(s string) { words = append(words, strings.Fields(s)...) }
	add("You asked:")
	words = append(words, strings.Fields("“"+question+"”.")...)
	add("Here is a long answer, written word by word.")
	target := 240 + r.intn(100) // words, roughly
	paragraph := 0
	for len(words) < target {
		sentence := pick(&r, openers) + " " + pick(&r, subjects) + " " + pick(&r, verbs) + " " + pick(&r, objects) + " " + pick(&r, tails)
		if r.intn(3) == 0 {
			sentence += ", because " + pick(&r, subjects) + " " + pick(&r, verbs) + " " + pick(&r, objects)
		}
		add(sentence + ".")
		paragraph++
		if paragraph == 3+r.intn(3) {
			words[len(words)-1] += "\n"
			paragraph = 0
		}
	}
	add("That is all: the end.")
	for i, w := range words[:len(words)-1] {
		if strings.HasSuffix(w, "\n") {
			words[i] += "\n"
		} else {
			words[i] += " "
		}
	}
	return words
}

// Answer is the whole answer to question: a few hundred words, the same
// every time for the same question.
func Answer(question string) string {
	return strings.Join(Words(question), "")
}

func pick(r *rng, from []string) string { return from[r.intn(len(from))] }

// rng is splitmix64: small, and the same sequence in every Go release
// (math/rand's generators do not promise that).
type rng uint64

func (r *rng) next() uint64 {
	*r += 0x9e3779b97f4a7c15
	z := uint64(*r)
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

func (r *rng) intn(n int) int { return int(r.next() % uint64(n)) }
