package route

import (
	"context"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
)

// The sweep routes messages stored long enough ago whose routing event
// never came (a push for an offline recipient, live for an online one),
// marks them routed, and leaves recent ones to their routing event.
func TestSweepRoutesUnroutedMessages(t *testing.T) {
	old := time.Now().Add(-time.Minute)
	mk := func(id, to string, at time.Time) *envelope.Envelope {
		return &envelope.Envelope{ID: id, Sender: "urn:sm:user:a", Recipient: to, Payload: []byte("c"), CreatedAt: at}
	}
	st := &fakeStore{envs: []*envelope.Envelope{
		mk("lost-offline", "urn:sm:user:off", old),
		mk("lost-online", "urn:sm:user:on", old),
		mk("recent", "urn:sm:user:off", time.Now()),
	}}
	n, b := &fakeNotifier{}, &fakeBus{}
	p := New(Options{Instance: "self", Notifier: n, HandlerTimeout: time.Second}, st, presenceByUser{"urn:sm:user:on": {"other"}}, b)
	if got := p.sweepOnce(context.Background(), 30*time.Second, time.Time{}, nil); got != 2 {
		t.Fatalf("first sweep found %d, want 2", got)
	}
	if !st.isRouted("lost-offline") || !st.isRouted("lost-online") || st.isRouted("recent") {
		t.Fatalf("routed marks %v", st.routed)
	}
	if len(n.got) != 1 || n.got[0].MessageID != "lost-offline" {
		t.Fatalf("pushes %+v, want one for lost-offline", n.got)
	}
	if len(b.out) != 1 || b.out[0].instance != "other" || b.out[0].m.ID != "lost-online.other" {
		t.Fatalf("deliveries %+v, want one for lost-online to other", b.out)
	}
	if got := p.sweepOnce(context.Background(), 30*time.Second, time.Time{}, nil); got != 0 {
		t.Fatalf("second sweep found %d, want 0", got)
	}
}
