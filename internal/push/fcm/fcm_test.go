package fcm_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/push"
	"github.com/go-routing-service/routingservice/internal/push/fcm"
	"github.com/go-routing-service/routingservice/internal/push/pushtest"
	"github.com/go-routing-service/routingservice/internal/store"
)

// waits records the retry waits a sender asked for, without waiting.
type waits struct {
	mu sync.Mutex
	d  []time.Duration
}

func (w *waits) wait(_ context.Context, d time.Duration) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.d = append(w.d, d)
	return nil
}

func (w *waits) got() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]time.Duration(nil), w.d...)
}

func newSender(t *testing.T, f *pushtest.FCM, edit func(*fcm.Config)) (*fcm.Sender, *waits) {
	t.Helper()
	w := &waits{}
	cfg := f.Config()
	cfg.MaxRetries = 2
	cfg.MaxRetryDelay = 10 * time.Second
	cfg.Wait = w.wait
	if edit != nil {
		edit(&cfg)
	}
	s, err := fcm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, w
}

var note = push.Notification{Recipient: "urn:sm:user:bob", MessageID: "01J9Z3MSG", Type: "chat"}

func TestSendAndroidAndIOS(t *testing.T) {
	t.Parallel()
	f := pushtest.NewFCM(t)
	s, _ := newSender(t, f, nil)
	ctx := context.Background()
	for _, p := range []string{"android", "ios"} {
		if err := s.Send(ctx, store.Target{Platform: p, Token: "tok-" + p}, note); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
	}
	got := f.Delivered()
	if len(got) != 2 {
		t.Fatalf("delivered %d, want 2", len(got))
	}
	for i, p := range []string{"android", "ios"} {
		r := got[i]
		if r.Platform != p || r.Token != "tok-"+p || r.MessageID != note.MessageID || r.Type != note.Type {
			t.Errorf("request %d = %+v", i, r)
		}
		if r.CollapseKey != push.CollapseKey(note.Recipient) {
			t.Errorf("collapse key %q, want %q", r.CollapseKey, push.CollapseKey(note.Recipient))
		}
	}
	if n := f.TokensIssued(); n != 1 {
		t.Errorf("access tokens issued = %d, want 1 (cached)", n)
	}
}

func TestTokenURLOverride(t *testing.T) {
	t.Parallel()
	f := pushtest.NewFCM(t)
	creds := filepath.Join(t.TempDir(), "sa.json")
	// The file names a token endpoint nobody listens on; the override wins.
	if err := os.WriteFile(creds, f.ServiceAccountJSON("https://127.0.0.1:1/token"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, _ := newSender(t, f, func(c *fcm.Config) { c.CredentialsFile = creds; c.TokenURL = f.TokenURL(); c.ProjectID = "" })
	if err := s.Send(context.Background(), store.Target{Platform: "android", Token: "t1"}, note); err != nil {
		t.Fatal(err)
	}
	f.WaitDelivered(t, 1)
}

func TestReauthorizeAfter401(t *testing.T) {
	t.Parallel()
	f := pushtest.NewFCM(t)
	s, _ := newSender(t, f, nil)
	ctx := context.Background()
	tg := store.Target{Platform: "android", Token: "t1"}
	if err := s.Send(ctx, tg, note); err != nil {
		t.Fatal(err)
	}
	f.RevokeTokens()
	if err := s.Send(ctx, tg, note); err != nil {
		t.Fatal(err)
	}
	if n := f.TokensIssued(); n != 2 {
		t.Errorf("tokens issued = %d, want 2", n)
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		replies   []pushtest.Reply
		gone      bool
		fail      bool
		attempts  int
		waits     []time.Duration // exact waits asked for (nil: only count)
		waitCount int
	}{
		{name: "unregistered", replies: []pushtest.Reply{{Status: 404, Reason: "UNREGISTERED"}}, gone: true, fail: true, attempts: 1},
		{name: "invalid token", replies: []pushtest.Reply{{Status: 400, Reason: "INVALID_ARGUMENT"}}, gone: true, fail: true, attempts: 1},
		{name: "sender id mismatch kept", replies: []pushtest.Reply{{Status: 403, Reason: "SENDER_ID_MISMATCH"}}, fail: true, attempts: 1},
		{name: "unavailable retried with retry-after", replies: []pushtest.Reply{{Status: 503, Reason: "UNAVAILABLE", RetryAfter: "3"}}, attempts: 2, waits: []time.Duration{3 * time.Second}},
		{name: "quota retried", replies: []pushtest.Reply{{Status: 429, Reason: "QUOTA_EXCEEDED", RetryAfter: "1"}, {Status: 500, Reason: "INTERNAL"}}, attempts: 3, waitCount: 2},
		{name: "retries bounded", replies: []pushtest.Reply{{Status: 500, Reason: "INTERNAL"}, {Status: 500, Reason: "INTERNAL"}, {Status: 500, Reason: "INTERNAL"}, {Status: 500, Reason: "INTERNAL"}}, fail: true, attempts: 3, waitCount: 2},
		{name: "retry-after beyond the limit", replies: []pushtest.Reply{{Status: 429, Reason: "QUOTA_EXCEEDED", RetryAfter: "3600"}}, fail: true, attempts: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := pushtest.NewFCM(t)
			s, w := newSender(t, f, nil)
			f.Script("tok", tc.replies...)
			err := s.Send(context.Background(), store.Target{Platform: "android", Token: "tok"}, note)
			if (err != nil) != tc.fail {
				t.Fatalf("err = %v, want failure %v", err, tc.fail)
			}
			if errors.Is(err, push.ErrTargetGone) != tc.gone {
				t.Fatalf("err = %v, want gone %v", err, tc.gone)
			}
			if n := len(f.Requests()); n != tc.attempts {
				t.Errorf("attempts = %d, want %d", n, tc.attempts)
			}
			got := w.got()
			if tc.waits != nil {
				if len(got) != len(tc.waits) || got[0] != tc.waits[0] {
					t.Errorf("waits = %v, want %v", got, tc.waits)
				}
			} else if tc.waitCount > 0 && len(got) != tc.waitCount {
				t.Errorf("waits = %v, want %d", got, tc.waitCount)
			}
		})
	}
}

// TestRetryAfterRealTimer honours Retry-After with the real timer.
func TestRetryAfterRealTimer(t *testing.T) {
	t.Parallel()
	f := pushtest.NewFCM(t)
	s, _ := newSender(t, f, func(c *fcm.Config) { c.Wait = nil })
	f.Script("tok", pushtest.Reply{Status: 503, Reason: "UNAVAILABLE", RetryAfter: "1"})
	start := time.Now()
	if err := s.Send(context.Background(), store.Target{Platform: "android", Token: "tok"}, note); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < time.Second {
		t.Errorf("retried after %s, before the 1s Retry-After", el)
	}
}
