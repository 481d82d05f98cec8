package route

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/push"
)

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func idOf(t *testing.T, m *bus.Message) string {
	t.Helper()
	var env envelope.Envelope
	if err := envelope.Unmarshal(m.Data, &env); err != nil {
		t.Fatal(err)
	}
	return env.ID
}

// A stored message routed to a live connection (in process or through a
// delivery event) that is still unacknowledged push.unacked_after later
// gets exactly one push; one acknowledged in time gets none; an offline
// recipient's push is requested at once and not again; ephemeral
// messages are not watched.
func TestPushForUnackedLiveMessages(t *testing.T) {
	const (
		acked   = "urn:sm:user:acked"   // connected here, acknowledges
		stuck   = "urn:sm:user:stuck"   // connected here, never acknowledges
		remote  = "urn:sm:user:remote"  // connected to another instance, never acknowledges
		offline = "urn:sm:user:offline" // not connected
	)
	pr := presenceByUser{acked: {"self"}, stuck: {"self"}, remote: {"other"}, offline: {}}
	st, n, l := &fakeStore{}, &fakeNotifier{}, &fakeLocal{}
	p := New(Options{Instance: "self", Sessions: l, Notifier: n, HandlerTimeout: time.Second,
		UnackedAfter: 200 * time.Millisecond}, st, pr, &fakeBus{})

	mAcked, mStuck, mRemote, mOffline := message(t, acked), message(t, stuck), message(t, remote), message(t, offline)
	ephemeral := ingress(t, true) // to urn:sm:user:b
	pr["urn:sm:user:b"] = []string{"other"}
	for i, err := range p.routeIngress(context.Background(), []*bus.Message{mAcked, mStuck, mRemote, mOffline, ephemeral}) {
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	if got := n.notifications(); len(got) != 1 || got[0].Recipient != offline {
		t.Fatalf("pushes right after routing: %+v, want one for the offline recipient", got)
	}
	if got := p.unacked.len(); got != 3 {
		t.Fatalf("watched %d messages, want 3 (the live, stored ones)", got)
	}
	st.ack(idOf(t, mAcked))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.pushUnacked(ctx) }()
	waitFor(t, "the watched messages to fall due", func() bool { return p.unacked.len() == 0 })
	cancel()
	<-done

	got := n.notifications()[1:]
	slices.SortFunc(got, func(a, b push.Notification) int {
		if a.Recipient < b.Recipient {
			return -1
		}
		return 1
	})
	want := []push.Notification{
		{Recipient: remote, MessageID: idOf(t, mRemote)},
		{Recipient: stuck, MessageID: idOf(t, mStuck)},
	}
	if !slices.EqualFunc(got, want, func(a, b push.Notification) bool {
		return a.Recipient == b.Recipient && a.MessageID == b.MessageID && a.Type == b.Type
	}) {
		t.Fatalf("pushes for unacknowledged messages %+v, want %+v", got, want)
	}
}

// The due messages of one recipient get one push, for the latest of them.
func TestPushUnackedOnePerRecipient(t *testing.T) {
	st, n := &fakeStore{}, &fakeNotifier{}
	p := New(Options{Notifier: n, HandlerTimeout: time.Second, UnackedAfter: time.Minute}, st, presenceByUser{}, &fakeBus{})
	for _, id := range []string{"1", "2", "3"} {
		st.envs = append(st.envs, &envelope.Envelope{ID: id, Recipient: "urn:sm:user:b"})
	}
	p.pushFor(context.Background(), []watched{
		{recipient: "urn:sm:user:b", id: "1", kind: "chat"},
		{recipient: "urn:sm:user:b", id: "2", kind: "chat"},
		{recipient: "urn:sm:user:b", id: "gone", kind: "chat"},
	})
	if got := n.notifications(); len(got) != 1 || got[0].MessageID != "2" || got[0].Type != "chat" {
		t.Fatalf("pushes %+v, want one for message 2", got)
	}
}

// The schedule is bounded; with push.unacked_after 0 nothing is watched.
func TestUnackedScheduleBounds(t *testing.T) {
	pr := presenceByUser{"urn:sm:user:b": {"other"}}
	p := New(Options{Instance: "self", Notifier: &fakeNotifier{}, HandlerTimeout: time.Second,
		UnackedAfter: time.Minute, UnackedMax: 2}, &fakeStore{}, pr, &fakeBus{})
	for range 3 {
		if err := handle(p, message(t, "urn:sm:user:b")); err != nil {
			t.Fatal(err)
		}
	}
	if got := p.unacked.len(); got != 2 {
		t.Fatalf("watched %d, want the cap of 2", got)
	}
	off := New(Options{Instance: "self", Notifier: &fakeNotifier{}, HandlerTimeout: time.Second}, &fakeStore{}, pr, &fakeBus{})
	if err := handle(off, message(t, "urn:sm:user:b")); err != nil {
		t.Fatal(err)
	}
	if off.unacked != nil {
		t.Fatal("messages watched with unacked_after 0")
	}
	off.pushUnacked(context.Background()) // returns at once
}
