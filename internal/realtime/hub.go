package realtime

import (
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/envelope"
)

// frame is one encoded server-to-client frame of a message.
type frame struct {
	id   string
	data []byte
	// accepted is when the API accepted the message (accept-to-deliver
	// latency).
	accepted time.Time
	// trace is the span of the message's delivery to this instance
	// (invalid when tracing is off).
	trace trace.SpanContext
	// ephemeral: the message is not stored (only a live frame carries it).
	ephemeral bool
}

// hub is the registry of this instance's live sessions by user.
type hub struct {
	// maxPerUser caps the sessions of one user.
	maxPerUser int

	mu    sync.RWMutex
	users map[string]map[*session]struct{}
	count int
}

func newHub(maxPerUser int) *hub {
	return &hub{maxPerUser: maxPerUser, users: map[string]map[*session]struct{}{}}
}

// add registers s unless its user already has maxPerUser sessions here.
func (h *hub) add(s *session) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	set := h.users[s.user]
	if len(set) >= h.maxPerUser {
		return false
	}
	if set == nil {
		set = map[*session]struct{}{}
		h.users[s.user] = set
	}
	set[s] = struct{}{}
	h.count++
	return true
}

func (h *hub) remove(s *session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	set := h.users[s.user]
	if _, ok := set[s]; !ok {
		return
	}
	delete(set, s)
	h.count--
	if len(set) == 0 {
		delete(h.users, s.user)
	}
}

// deliver queues env on every session of its recipient. wire, when not nil, is env's wire form, which the frame carries
// as it is; else env is encoded. It never blocks: a session whose queue
// is full is closed (its messages stay in the store). It fails only when
// env cannot be encoded.
func (h *hub) deliver(env *envelope.Envelope, wire []byte, sc trace.SpanContext) error {
	h.mu.RLock()
	set := h.users[env.Recipient]
	if len(set) == 0 {
		h.mu.RUnlock()
		return nil
	}
	sessions := make([]*session, 0, len(set))
	for s := range set {
		sessions = append(sessions, s)
	}
	h.mu.RUnlock()
	var data []byte
	if wire != nil {
		data = encodeMessageWire(wire)
	} else {
		var err error
		if data, err = encodeMessage(env); err != nil {
			return err
		}
	}
	f := frame{id: env.ID, data: data, accepted: env.CreatedAt, trace: sc, ephemeral: env.Ephemeral}
	for _, s := range sessions {
		s.enqueue(f)
	}
	return nil
}

// all returns every session.
func (h *hub) all() []*session {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]*session, 0, h.count)
	for _, set := range h.users {
		for s := range set {
			out = append(out, s)
		}
	}
	return out
}
