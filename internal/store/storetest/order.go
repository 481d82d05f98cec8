package storetest

import (
	"fmt"
	"slices"
	"testing"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

// Write is one item of a group-commit batch in RunCommitOrderTest: the
// envelope of a PutMessages call (Put), a message of a PutNew call (New),
// an id of an Ack call of Recipient (Ack), or an id of a MarkRouted call
// (Mark). Exactly one of Put, New, Ack and Mark is set.
type Write struct {
	Put       *envelope.Envelope
	New       *store.NewMessage
	Ack       string
	Recipient string
	Mark      string
}

// CommitFunc commits writes as one batch of an adapter's group-commit
// writer (one transaction), in the order given, as the writer would after
// taking them in that order from several callers, and returns the result
// of each: for a put, whether it was reported acknowledged (not stored);
// for a new message, whether it was stored; for an ack, whether it
// deleted the envelope; false for a mark. It fails t if the commit fails.
type CommitFunc func(t *testing.T, writes []Write) []bool

// RunCommitOrderTest checks, through commit, the order promised for puts
// and acks that meet in one group-commit batch: the batch has the effect
// of running them one at a time in the order the writer took them (the
// order the callers reached it), routed marks last. s is the store that
// commit writes to; the writer must be idle (no call of s in flight).
func RunCommitOrderTest(t *testing.T, s store.Store, commit CommitFunc) {
	t.Helper()
	type stored struct {
		pending  []int // indexes of the envelopes pending for bob, in store order
		unrouted []int // those of them not routed
	}
	tests := []struct {
		name   string
		before []int    // envelopes stored before the batch
		keys   []string // alice's idempotency records reserved before the batch
		batch  func(e []*envelope.Envelope) []Write
		want   []bool
		after  stored
	}{{
		name:  "put then ack",
		batch: func(e []*envelope.Envelope) []Write { return []Write{putOf(e[0]), ackOf(bob, e[0])} },
		want:  []bool{false, true},
	}, {
		name:  "ack then put",
		batch: func(e []*envelope.Envelope) []Write { return []Write{ackOf(bob, e[0]), putOf(e[0])} },
		want:  []bool{false, false},
		after: stored{pending: []int{0}, unrouted: []int{0}},
	}, {
		name:   "stored, ack then put",
		before: []int{0},
		batch:  func(e []*envelope.Envelope) []Write { return []Write{ackOf(bob, e[0]), putOf(e[0])} },
		want:   []bool{true, true},
	}, {
		name:  "put, ack, put",
		batch: func(e []*envelope.Envelope) []Write { return []Write{putOf(e[0]), ackOf(bob, e[0]), putOf(e[0])} },
		want:  []bool{false, true, true},
	}, {
		name:   "acks of one id by someone else, then twice by its recipient",
		before: []int{0},
		batch: func(e []*envelope.Envelope) []Write {
			return []Write{ackOf(carol, e[0]), ackOf(bob, e[0]), ackOf(bob, e[0])}
		},
		want: []bool{false, true, false},
	}, {
		name:  "mark then put: marks come last",
		batch: func(e []*envelope.Envelope) []Write { return []Write{mark(e[0]), putOf(e[0])} },
		want:  []bool{false, false},
		after: stored{pending: []int{0}},
	}, {
		name:   "interleaved ids",
		before: []int{1, 3},
		batch: func(e []*envelope.Envelope) []Write {
			return []Write{
				putOf(e[0]), ackOf(bob, e[1]), putOf(e[2]), ackOf(bob, e[0]), // put 0 before its ack
				putOf(e[1]), mark(e[2]), ackOf(bob, e[3]), putOf(e[3]), // puts after acks of their ids
				ackOf(bob, e[4]), putOf(e[4]), putOf(e[5]), ackOf(bob, e[2]), mark(e[5]),
			}
		},
		want:  []bool{false, true, false, true, true, false, true, true, false, false, false, true, false},
		after: stored{pending: []int{4, 5}, unrouted: []int{4}},
	}, {
		name: "new, ack, put: no tombstone for a new message",
		batch: func(e []*envelope.Envelope) []Write {
			return []Write{newOf(e[0], ""), ackOf(bob, e[0]), putOf(e[0])}
		},
		want:  []bool{true, true, false},
		after: stored{pending: []int{0}, unrouted: []int{0}},
	}, {
		name: "put, ack, new with CheckTombstone",
		keys: []string{"k0"},
		batch: func(e []*envelope.Envelope) []Write {
			checked := newOf(e[0], "k0")
			checked.New.CheckTombstone = true
			return []Write{putOf(e[0]), ackOf(bob, e[0]), checked, newOf(e[1], "")}
		},
		want:  []bool{false, true, false, true},
		after: stored{pending: []int{1}, unrouted: []int{1}},
	}, {
		name: "claims of one record: the first takes it",
		keys: []string{"k1", "k2"},
		batch: func(e []*envelope.Envelope) []Write {
			return []Write{
				newOf(e[0], "k1"), newOf(e[1], "k1"), putOf(e[2]), ackOf(bob, e[2]),
				newOf(e[3], "k2"), newOf(e[4], "k3"), newOf(e[5], ""), mark(e[5]),
			}
		},
		want:  []bool{true, false, false, true, true, false, true, false},
		after: stored{pending: []int{0, 3, 5}, unrouted: []int{0, 3}},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			envs := make([]*envelope.Envelope, 6)
			for i := range envs {
				envs[i] = newEnv(alice, bob, base, fmt.Sprint(i))
			}
			// Each case acks only its own envelopes; bob's others are
			// filtered out of what it checks.
			for _, i := range tc.before {
				put(t, s, envs[i])
			}
			for _, key := range tc.keys {
				reserveFor(t, s, newEnv(alice, bob, base, key), key+"-"+envs[0].ID)
			}
			// The records of a case are keyed by its first envelope's id
			// too, so that cases share none.
			batch := func() []Write {
				ws := tc.batch(envs)
				for _, w := range ws {
					if w.New != nil && w.New.Key != "" {
						w.New.Key += "-" + envs[0].ID
					}
				}
				return ws
			}
			if got := commit(t, batch()); !slices.Equal(got, tc.want) {
				t.Errorf("results %v, want %v", got, tc.want)
			}
			mine := func(got []*envelope.Envelope) []int {
				var out []int
				for _, e := range got {
					if i := slices.IndexFunc(envs, func(x *envelope.Envelope) bool { return x.ID == e.ID }); i >= 0 {
						out = append(out, i)
					}
				}
				return out
			}
			if got := mine(all(t, s, bob, 500)); !slices.Equal(got, tc.after.pending) {
				t.Errorf("pending %v, want %v", got, tc.after.pending)
			}
			unrouted, err := s.Unrouted(t.Context(), future, 500)
			if err != nil {
				t.Fatal(err)
			}
			if got := mine(unrouted); !slices.Equal(got, tc.after.unrouted) {
				t.Errorf("unrouted %v, want %v", got, tc.after.unrouted)
			}
			// An id deleted by an ack stays acknowledged, unless PutNew
			// stored it (no tombstone: the batch may store it again).
			ws := batch()
			for i, w := range ws {
				if w.Ack != "" && tc.want[i] && !slices.ContainsFunc(ws, func(n Write) bool { return n.New != nil && n.New.Envelope.ID == w.Ack }) {
					if got := putAcked(t, s, envs[slices.IndexFunc(envs, func(x *envelope.Envelope) bool { return x.ID == w.Ack })]); !got[0] {
						t.Errorf("put of %s after its ack not reported acknowledged", w.Ack)
					}
				}
			}
		})
	}
}

func ackOf(recipient string, e *envelope.Envelope) Write {
	return Write{Ack: e.ID, Recipient: recipient}
}
func putOf(e *envelope.Envelope) Write { return Write{Put: e} }

// newOf is a PutNew of e claiming alice's record key ("" for none).
func newOf(e *envelope.Envelope, key string) Write {
	return Write{New: &store.NewMessage{Envelope: e, Key: key}}
}
func mark(e *envelope.Envelope) Write { return Write{Mark: e.ID} }
