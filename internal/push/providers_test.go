package push_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/push"
	"github.com/go-routing-service/routingservice/internal/push/apns"
	"github.com/go-routing-service/routingservice/internal/push/fcm"
	"github.com/go-routing-service/routingservice/internal/push/pushtest"
	"github.com/go-routing-service/routingservice/internal/push/webpush"
	"github.com/go-routing-service/routingservice/internal/store"
)

// TestDispatcherWithProviders runs the dispatcher over the real senders and
// the local provider stand-ins: one push per platform per window, and a
// subscription the push service reports gone is removed from the store.
func TestDispatcherWithProviders(t *testing.T) {
	t.Parallel()
	f, a, w := pushtest.NewFCM(t), pushtest.NewAPNs(t), pushtest.NewWebPush(t)
	fs, err := fcm.New(f.Config())
	if err != nil {
		t.Fatal(err)
	}
	as, err := apns.New(a.Config())
	if err != nil {
		t.Fatal(err)
	}
	ws, err := webpush.New(w.Config())
	if err != nil {
		t.Fatal(err)
	}
	st := newMemTargets()
	ctx := context.Background()
	const bob = "urn:sm:user:bob"
	sub, gone := w.NewSubscription(), w.NewSubscription()
	for _, tg := range []store.Target{
		{Platform: "android", Token: "android-token"}, {Platform: "ios", Token: "ios-token"},
		{Platform: "apns", Token: pushtest.NewAPNsToken()}, sub, gone,
	} {
		if err := (push.ValidateOptions{AllowInsecureLocalEndpoints: true}).Validate(tg); err != nil {
			t.Fatalf("%s target invalid: %v", tg.Platform, err)
		}
		_ = st.PutTarget(ctx, bob, tg, 0)
	}
	w.Unsubscribe(gone.Token)
	d := push.NewDispatcher(st, []push.Sender{fs, as, ws}, push.DispatcherOptions{CoalesceWindow: time.Hour})
	run(t, d)
	for i := range 3 {
		d.Notify(note(bob, i))
	}
	eventually(t, "pushes on every platform", func() bool {
		return d.Count(push.OutcomeSent, "android") == 1 && d.Count(push.OutcomeSent, "ios") == 1 &&
			d.Count(push.OutcomeSent, "apns") == 1 && d.Count(push.OutcomeSent, "webpush") == 1 &&
			d.Count(push.OutcomeRemoved, "webpush") == 1
	})
	if n := len(f.Delivered()); n != 2 {
		t.Errorf("fcm pushes = %d, want 2 (android and ios)", n)
	}
	if n := len(a.Delivered()); n != 1 {
		t.Errorf("apns pushes = %d, want 1", n)
	}
	if got := w.Delivered(); len(got) != 1 || got[0].Endpoint != sub.Token || got[0].MessageID != "m0" {
		t.Errorf("web pushes = %+v", got)
	}
	if slices.ContainsFunc(st.of(bob), func(t store.Target) bool { return t.Token == gone.Token }) {
		t.Error("gone subscription still stored")
	}
}
