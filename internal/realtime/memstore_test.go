package realtime

import (
	"context"
	"sync"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/store"
)

// memStore is an in-memory Store: each recipient's pending envelopes in
// the order they were put, until acknowledged.
type memStore struct {
	mu   sync.Mutex
	seq  int64
	msgs map[string][]memMsg // by recipient
	// largest is the largest page returned, in frame bytes.
	largest int64
}

type memMsg struct {
	seq int64
	env *envelope.Envelope
}

func newMemStore() *memStore { return &memStore{msgs: map[string][]memMsg{}} }

func (m *memStore) put(env *envelope.Envelope) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seq++
	m.msgs[env.Recipient] = append(m.msgs[env.Recipient], memMsg{m.seq, env})
}

// pending returns the ids of recipient's pending envelopes, oldest first.
func (m *memStore) pending(recipient string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []string
	for _, x := range m.msgs[recipient] {
		ids = append(ids, x.env.ID)
	}
	return ids
}

// largestPage is the largest page PendingWithin returned, in the bytes of
// its frames.
func (m *memStore) largestPage() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.largest
}

func (m *memStore) PendingWithin(_ context.Context, recipient, cursor string, limit, maxBytes int) (store.Page, error) {
	after, err := store.DecodeCursor(cursor)
	if err != nil {
		return store.Page{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var page store.Page
	var last int64
	var bytes int
	var frames int64
	defer func() { m.largest = max(m.largest, frames) }()
	for _, x := range m.msgs[recipient] {
		if x.seq <= after {
			continue
		}
		bytes += len(x.env.Payload)
		if len(page.Envelopes) == limit || len(page.Envelopes) > 0 && maxBytes > 0 && bytes > maxBytes {
			page.Next = store.EncodeCursor(last)
			break
		}
		frames += messageFrameBound(len(x.env.Payload))
		// A copy, as a store returns: what the session holds is its own.
		env := *x.env
		env.Payload = append([]byte(nil), x.env.Payload...)
		page.Envelopes = append(page.Envelopes, &env)
		last = x.seq
	}
	return page, nil
}

func (m *memStore) Ack(_ context.Context, recipient string, ids []string) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	drop := make(map[string]bool, len(ids))
	for _, id := range ids {
		drop[id] = true
	}
	kept, n := m.msgs[recipient][:0], 0
	for _, x := range m.msgs[recipient] {
		if drop[x.env.ID] {
			n++
			continue
		}
		kept = append(kept, x)
	}
	m.msgs[recipient] = kept
	return n, nil
}
