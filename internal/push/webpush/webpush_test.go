package webpush_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/push"
	"github.com/go-routing-service/routingservice/internal/push/egress"
	"github.com/go-routing-service/routingservice/internal/push/pushtest"
	"github.com/go-routing-service/routingservice/internal/push/webpush"
)

var note = push.Notification{Recipient: "urn:sm:user:bob", MessageID: "01J9Z3MSG", Type: "chat"}

func newSender(t *testing.T, p *pushtest.WebPush) (*webpush.Sender, *[]time.Duration) {
	t.Helper()
	var mu sync.Mutex
	var waits []time.Duration
	cfg := p.Config()
	cfg.TTL = time.Hour
	cfg.Urgency = "normal"
	cfg.MaxRetries = 2
	cfg.MaxRetryDelay = 10 * time.Second
	cfg.Wait = func(_ context.Context, d time.Duration) error {
		mu.Lock()
		defer mu.Unlock()
		waits = append(waits, d)
		return nil
	}
	s, err := webpush.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, &waits
}

func TestSend(t *testing.T) {
	t.Parallel()
	p := pushtest.NewWebPush(t)
	s, _ := newSender(t, p)
	if s.PublicKey() != p.VAPIDPublicKey() {
		t.Fatalf("public key %s, want %s", s.PublicKey(), p.VAPIDPublicKey())
	}
	sub := p.NewSubscription()
	if err := (push.ValidateOptions{AllowInsecureLocalEndpoints: true}).Validate(sub); err != nil {
		t.Fatalf("the stand-in's subscription is not valid: %v", err)
	}
	for range 2 {
		if err := s.Send(context.Background(), sub, note); err != nil {
			t.Fatal(err)
		}
	}
	got := p.Delivered()
	if len(got) != 2 {
		t.Fatalf("delivered %d, want 2", len(got))
	}
	r := got[0]
	if r.Endpoint != sub.Token || r.MessageID != note.MessageID || r.Type != note.Type ||
		r.TTL != 3600 || r.Urgency != "normal" || r.Topic != push.CollapseKey(note.Recipient) {
		t.Errorf("push = %+v", r)
	}
}

func TestDefaultTTLIsNotZero(t *testing.T) {
	t.Parallel()
	p := pushtest.NewWebPush(t)
	s, err := webpush.New(p.Config())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(context.Background(), p.NewSubscription(), note); err != nil {
		t.Fatal(err)
	}
	if r := p.WaitDelivered(t, 1)[0]; r.TTL != 86400 || r.Urgency != "high" {
		t.Errorf("defaults: TTL %d urgency %q, want 86400 high", r.TTL, r.Urgency)
	}
}

func TestGone(t *testing.T) {
	t.Parallel()
	p := pushtest.NewWebPush(t)
	s, _ := newSender(t, p)
	sub := p.NewSubscription()
	p.Unsubscribe(sub.Token)
	if err := s.Send(context.Background(), sub, note); !errors.Is(err, push.ErrTargetGone) {
		t.Fatalf("410: err = %v, want gone", err)
	}
	unknown := p.NewSubscription()
	unknown.Token += "-unknown"
	if err := s.Send(context.Background(), unknown, note); !errors.Is(err, push.ErrTargetGone) {
		t.Fatalf("404: err = %v, want gone", err)
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		replies  []pushtest.Reply
		fail     bool
		attempts int
		waits    []time.Duration
	}{
		{name: "429 with retry-after", replies: []pushtest.Reply{{Status: 429, RetryAfter: "5"}}, attempts: 2, waits: []time.Duration{5 * time.Second}},
		{name: "502 then 503", replies: []pushtest.Reply{{Status: 502}, {Status: 503}}, attempts: 3},
		{name: "bounded", replies: []pushtest.Reply{{Status: 500}, {Status: 500}, {Status: 500}}, fail: true, attempts: 3},
		{name: "413 not retried", replies: []pushtest.Reply{{Status: 413}}, fail: true, attempts: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := pushtest.NewWebPush(t)
			s, waits := newSender(t, p)
			sub := p.NewSubscription()
			p.Script(sub.Token, tc.replies...)
			err := s.Send(context.Background(), sub, note)
			if (err != nil) != tc.fail || errors.Is(err, push.ErrTargetGone) {
				t.Fatalf("err = %v, want failure %v and not gone", err, tc.fail)
			}
			if n := len(p.Requests()); n != tc.attempts {
				t.Errorf("attempts = %d, want %d", n, tc.attempts)
			}
			if len(*waits) != tc.attempts-1 || tc.waits != nil && (*waits)[0] != tc.waits[0] {
				t.Errorf("waits = %v, want %d (%v)", *waits, tc.attempts-1, tc.waits)
			}
		})
	}
}

func TestLoadOrCreateVAPID(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data")
	var wg sync.WaitGroup
	pubs := make([]string, 4)
	for i := range pubs {
		wg.Go(func() {
			pub, _, err := webpush.LoadOrCreateVAPID(dir)
			if err != nil {
				t.Error(err)
			}
			pubs[i] = pub
		})
	}
	wg.Wait()
	for _, p := range pubs[1:] {
		if p != pubs[0] {
			t.Fatalf("concurrent first uses disagree: %v", pubs)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, webpush.VAPIDFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	pub, priv, err := webpush.LoadOrCreateVAPID(dir)
	if err != nil || pub != pubs[0] {
		t.Fatalf("reload: %s %v", pub, err)
	}
	if _, derived, err := webpush.ParseVAPIDPrivateKey(priv); err != nil || derived != pub {
		t.Fatalf("private key does not match: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("data dir holds %d files, want only %s", len(entries), webpush.VAPIDFile)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	t.Parallel()
	_, priv, err := webpush.GenerateVAPIDKeys()
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]webpush.Config{
		"subject":  {Subject: "ops@example.com", VAPIDPrivateKey: priv},
		"key":      {Subject: "mailto:ops@example.com", VAPIDPrivateKey: "not-a-key"},
		"urgency":  {Subject: "mailto:ops@example.com", VAPIDPrivateKey: priv, Urgency: "urgent"},
		"lifetime": {Subject: "mailto:ops@example.com", VAPIDPrivateKey: priv, TokenLifetime: 25 * time.Hour},
	} {
		if _, err := webpush.New(cfg); err == nil {
			t.Errorf("%s: bad config accepted", name)
		}
	}
}

// An endpoint on an internal address is refused when the connection is
// made, without a retry, and its answer (if it had one) can never remove
// the target: a user cannot probe internal hosts through push.
func TestInternalEndpointRefused(t *testing.T) {
	t.Parallel()
	p := pushtest.NewWebPush(t)
	cfg := p.Config()
	cfg.HTTPClient = nil // the default client: loopback not allowed
	cfg.MaxRetries = 2
	waited := 0
	cfg.Wait = func(context.Context, time.Duration) error { waited++; return nil }
	s, err := webpush.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sub := p.NewSubscription()
	err = s.Send(context.Background(), sub, note)
	if !errors.Is(err, egress.ErrForbiddenAddress) || errors.Is(err, push.ErrTargetGone) {
		t.Fatalf("err = %v, want ErrForbiddenAddress and not gone", err)
	}
	if n := len(p.Requests()); n != 0 || waited != 0 {
		t.Fatalf("the internal endpoint got %d requests after %d retry waits, want none", n, waited)
	}
	u, _ := url.Parse(sub.Token)
	if strings.Contains(err.Error(), u.Path) {
		t.Fatalf("error %q names the endpoint's path", err)
	}
}

// A push service that answers with a redirect is not followed: the push
// fails (the target is kept) and the redirect's target gets nothing.
func TestRedirectNotFollowed(t *testing.T) {
	t.Parallel()
	p := pushtest.NewWebPush(t)
	s, _ := newSender(t, p)
	internal := p.NewSubscription() // would accept the push if it got it
	var hits atomic.Int64
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Redirect(w, r, internal.Token, http.StatusTemporaryRedirect)
	}))
	defer redirector.Close()
	sub := internal
	sub.Token = redirector.URL + "/push/abc"
	err := s.Send(context.Background(), sub, note)
	if err == nil || errors.Is(err, push.ErrTargetGone) {
		t.Fatalf("err = %v, want a failure that keeps the target", err)
	}
	if n := len(p.Requests()); n != 0 {
		t.Fatalf("the redirect's target got %d requests", n)
	}
	if n := hits.Load(); n != 1 {
		t.Fatalf("the redirecting service got %d requests, want 1 (a redirect is not retried)", n)
	}
}
