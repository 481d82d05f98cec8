package apns_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/push"
	"github.com/go-routing-service/routingservice/internal/push/apns"
	"github.com/go-routing-service/routingservice/internal/push/egress"
	"github.com/go-routing-service/routingservice/internal/push/pushtest"
	"github.com/go-routing-service/routingservice/internal/store"
)

var note = push.Notification{Recipient: "urn:sm:user:bob", MessageID: "01J9Z3MSG", Type: "chat"}

// clock is a settable clock shared by the sender and the stand-in.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newSender(t *testing.T, a *pushtest.APNs, edit func(*apns.Config)) (*apns.Sender, *[]time.Duration) {
	t.Helper()
	var mu sync.Mutex
	var waits []time.Duration
	cfg := a.Config()
	cfg.MaxRetries = 2
	cfg.MaxRetryDelay = 10 * time.Second
	cfg.Wait = func(_ context.Context, d time.Duration) error {
		mu.Lock()
		defer mu.Unlock()
		waits = append(waits, d)
		return nil
	}
	if edit != nil {
		edit(&cfg)
	}
	s, err := apns.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, &waits
}

func TestSendBackgroundAndAlert(t *testing.T) {
	t.Parallel()
	a := pushtest.NewAPNs(t)
	tok := pushtest.NewAPNsToken()
	bg, _ := newSender(t, a, nil)
	alert, _ := newSender(t, a, func(c *apns.Config) { c.PushType = apns.PushTypeAlert; c.Priority = 10 })
	ctx := context.Background()
	if err := bg.Send(ctx, store.Target{Platform: "apns", Token: tok}, note); err != nil {
		t.Fatal(err)
	}
	if err := alert.Send(ctx, store.Target{Platform: "apns", Token: tok}, note); err != nil {
		t.Fatal(err)
	}
	got := a.Delivered()
	if len(got) != 2 {
		t.Fatalf("delivered %d, want 2", len(got))
	}
	if r := got[0]; r.PushType != "background" || r.Priority != 5 || r.Alert || r.Token != tok ||
		r.MessageID != note.MessageID || r.Type != note.Type || r.CollapseID != push.CollapseKey(note.Recipient) {
		t.Errorf("background push = %+v", r)
	}
	if r := got[1]; r.PushType != "alert" || r.Priority != 10 || !r.Alert {
		t.Errorf("alert push = %+v", r)
	}
	if until := time.Until(got[0].Expiration); until < 23*time.Hour || until > 25*time.Hour {
		t.Errorf("expiration in %s, want about 24h", until)
	}
}

func TestConfigRefusesPriority10ForBackground(t *testing.T) {
	t.Parallel()
	a := pushtest.NewAPNs(t)
	cfg := a.Config()
	cfg.Priority = 10
	if _, err := apns.New(cfg); err == nil {
		t.Fatal("background push with priority 10 accepted")
	}
}

func TestProviderTokenRefresh(t *testing.T) {
	t.Parallel()
	a := pushtest.NewAPNs(t)
	c := &clock{now: time.Now()}
	a.SetNow(c.Now)
	s, _ := newSender(t, a, func(cfg *apns.Config) { cfg.Now = c.Now })
	tok := pushtest.NewAPNsToken()
	send := func() time.Time {
		t.Helper()
		if err := s.Send(context.Background(), store.Target{Platform: "apns", Token: tok}, note); err != nil {
			t.Fatal(err)
		}
		d := a.Delivered()
		return d[len(d)-1].TokenIssuedAt
	}
	first := send()
	c.Add(49 * time.Minute)
	if got := send(); !got.Equal(first) {
		t.Errorf("token replaced after 49m (iat %s, was %s)", got, first)
	}
	c.Add(2 * time.Minute)
	second := send()
	if !second.After(first) {
		t.Errorf("token not replaced after 51m (iat %s)", second)
	}
	if want := c.Now().Truncate(time.Second); !second.Equal(want) {
		t.Errorf("new token iat %s, want %s", second, want)
	}
}

func TestExpiredProviderTokenRetriedOnce(t *testing.T) {
	t.Parallel()
	a := pushtest.NewAPNs(t)
	s, _ := newSender(t, a, nil)
	tok := pushtest.NewAPNsToken()
	a.Script(tok, pushtest.Reply{Status: 403, Reason: "ExpiredProviderToken"})
	if err := s.Send(context.Background(), store.Target{Platform: "apns", Token: tok}, note); err != nil {
		t.Fatal(err)
	}
	if n := len(a.Requests()); n != 2 {
		t.Errorf("attempts = %d, want 2", n)
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		replies  []pushtest.Reply
		gone     bool
		fail     bool
		attempts int
		waits    []time.Duration
	}{
		{name: "unregistered", replies: []pushtest.Reply{{Status: 410, Reason: "Unregistered"}}, gone: true, fail: true, attempts: 1},
		{name: "bad device token", replies: []pushtest.Reply{{Status: 400, Reason: "BadDeviceToken"}}, gone: true, fail: true, attempts: 1},
		{name: "token not for topic kept", replies: []pushtest.Reply{{Status: 400, Reason: "DeviceTokenNotForTopic"}}, fail: true, attempts: 1},
		{name: "too many requests with retry-after", replies: []pushtest.Reply{{Status: 429, Reason: "TooManyRequests", RetryAfter: "2"}}, attempts: 2, waits: []time.Duration{2 * time.Second}},
		{name: "500 then 503 retried", replies: []pushtest.Reply{{Status: 500, Reason: "InternalServerError"}, {Status: 503, Reason: "ServiceUnavailable"}}, attempts: 3},
		{name: "retries bounded", replies: []pushtest.Reply{{Status: 503, Reason: "ServiceUnavailable"}, {Status: 503, Reason: "ServiceUnavailable"}, {Status: 503, Reason: "ServiceUnavailable"}}, fail: true, attempts: 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := pushtest.NewAPNs(t)
			s, waits := newSender(t, a, nil)
			tok := pushtest.NewAPNsToken()
			a.Script(tok, tc.replies...)
			err := s.Send(context.Background(), store.Target{Platform: "apns", Token: tok}, note)
			if (err != nil) != tc.fail || errors.Is(err, push.ErrTargetGone) != tc.gone {
				t.Fatalf("err = %v, want failure %v gone %v", err, tc.fail, tc.gone)
			}
			if n := len(a.Requests()); n != tc.attempts {
				t.Errorf("attempts = %d, want %d", n, tc.attempts)
			}
			if tc.waits != nil && (len(*waits) != 1 || (*waits)[0] != tc.waits[0]) {
				t.Errorf("waits = %v, want %v", *waits, tc.waits)
			}
			if len(*waits) != tc.attempts-1 {
				t.Errorf("%d waits for %d attempts", len(*waits), tc.attempts)
			}
		})
	}
}

func TestNotHexTokenIsGone(t *testing.T) {
	t.Parallel()
	a := pushtest.NewAPNs(t)
	s, _ := newSender(t, a, nil)
	err := s.Send(context.Background(), store.Target{Platform: "apns", Token: "../../x"}, note)
	if !errors.Is(err, push.ErrTargetGone) {
		t.Fatalf("err = %v, want gone", err)
	}
	if n := len(a.Requests()); n != 0 {
		t.Errorf("%d requests sent", n)
	}
}

// Without a client of its own a Sender uses the egress client, which
// refuses the stand-in's loopback address; the error names the endpoint,
// never the device token.
func TestDefaultClientRefusesLoopback(t *testing.T) {
	t.Parallel()
	a := pushtest.NewAPNs(t)
	s, _ := newSender(t, a, func(c *apns.Config) { c.HTTPClient = nil })
	tok := pushtest.NewAPNsToken()
	err := s.Send(context.Background(), store.Target{Platform: "apns", Token: tok}, note)
	if !errors.Is(err, egress.ErrForbiddenAddress) {
		t.Fatalf("err = %v, want ErrForbiddenAddress", err)
	}
	if strings.Contains(err.Error(), tok) {
		t.Fatalf("error %q names the device token", err)
	}
	if n := len(a.Requests()); n != 0 {
		t.Fatalf("stand-in got %d requests", n)
	}
}
