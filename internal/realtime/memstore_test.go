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
	// largest is the largest page limit asked for.
	largest int
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

// largestPage is the largest page limit Pending was asked for.
func (m *memStore) largestPage() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.largest
}

func (m *memStore) Pending(_ context.Context, recipient, cursor string, limit int) (store.Page, error) {
	after, err := store.DecodeCursor(cursor)
	if err != nil {
		return store.Page{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.largest = max(m.largest, limit)
	var page store.Page
	var last int64
	for _, x := range m.msgs[recipient] {
		if x.seq <= after {
			continue
		}
		if len(page.Envelopes) == limit {
			page.Next = store.EncodeCursor(last)
			break
		}
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
