// Package webpush sends push notifications to browsers: RFC 8030 delivery
// to the subscription's endpoint, the payload encrypted as RFC 8291
// describes (aes128gcm), the sender identified by VAPID (RFC 8292).
//
// The encryption is written on the standard library (crypto/ecdh,
// crypto/hkdf, AES-GCM) and checked against the RFC's worked example; VAPID
// tokens are ES256 JWTs made with golang-jwt.
package webpush

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/go-routing-service/routingservice/internal/push"
	"github.com/go-routing-service/routingservice/internal/push/egress"
	"github.com/go-routing-service/routingservice/internal/push/internal/retry"
	"github.com/go-routing-service/routingservice/internal/store"
)

// Config configures a Sender. Zero fields take the defaults.
type Config struct {
	// Subject is the VAPID "sub" claim: a mailto: or https: contact.
	Subject string
	// VAPIDPrivateKey is the base64url private key (GenerateVAPIDKeys,
	// LoadOrCreateVAPID); the public key is derived from it.
	VAPIDPrivateKey string
	// TTL is how long the push service keeps an undelivered push (default
	// 24h; whole seconds).
	TTL time.Duration
	// Urgency is very-low, low, normal or high (default high).
	Urgency string
	// TokenLifetime is the VAPID JWT's lifetime, at most 24h (default 12h).
	TokenLifetime time.Duration
	// MaxRetries after a 429 or 5xx answer (default 0: none); MinRetryDelay
	// and MaxRetryDelay bound the backoff (a longer Retry-After gives up).
	MaxRetries    int
	MinRetryDelay time.Duration
	MaxRetryDelay time.Duration
	// HTTPClient sends the requests (nil: an egress client, which refuses
	// non-public addresses and redirects).
	HTTPClient *http.Client
	// Wait waits between retries (nil: a timer); Now is the clock of the
	// VAPID tokens (nil: time.Now).
	Wait func(ctx context.Context, d time.Duration) error
	Now  func() time.Time
}

// Sender delivers notifications to Web Push subscriptions. Safe for
// concurrent use.
type Sender struct {
	cfg    Config
	key    *ecdsa.PrivateKey
	pub    string
	client *http.Client
	policy retry.Policy

	mu     sync.Mutex
	tokens map[string]vapidToken // by endpoint origin
}

type vapidToken struct {
	jwt string
	exp time.Time
}

// New returns a Sender, checking the configuration.
func New(cfg Config) (*Sender, error) {
	if !strings.HasPrefix(cfg.Subject, "mailto:") && !strings.HasPrefix(cfg.Subject, "https://") {
		return nil, fmt.Errorf("webpush: subject must be a mailto: or https: URL, got %q", cfg.Subject)
	}
	key, pub, err := ParseVAPIDPrivateKey(cfg.VAPIDPrivateKey)
	if err != nil {
		return nil, fmt.Errorf("webpush: %w", err)
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 24 * time.Hour
	}
	switch cfg.Urgency {
	case "":
		cfg.Urgency = "high"
	case "very-low", "low", "normal", "high":
	default:
		return nil, fmt.Errorf("webpush: urgency must be very-low, low, normal or high, got %q", cfg.Urgency)
	}
	if cfg.TokenLifetime <= 0 {
		cfg.TokenLifetime = 12 * time.Hour
	}
	if cfg.TokenLifetime > 24*time.Hour {
		return nil, errors.New("webpush: token lifetime must be at most 24h (RFC 8292)")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	client := cfg.HTTPClient
	if client == nil {
		client = egress.NewClient(egress.Options{})
	}
	return &Sender{
		cfg:    cfg,
		key:    key,
		pub:    pub,
		client: client,
		policy: retry.Policy{MaxRetries: cfg.MaxRetries, MinDelay: cfg.MinRetryDelay, MaxDelay: cfg.MaxRetryDelay, Wait: cfg.Wait},
		tokens: make(map[string]vapidToken),
	}, nil
}

// PublicKey returns the base64url VAPID public key browsers subscribe with.
func (s *Sender) PublicKey() string { return s.pub }

// Platforms returns ["webpush"].
func (s *Sender) Platforms() []string { return []string{"webpush"} }

// payload is the cleartext of a push: no message content, only what lets
// the client fetch.
type payload struct {
	MessageID string `json:"message_id"`
	Type      string `json:"type"`
}

// Send encrypts n for the subscription t and posts it to t's endpoint. A
// 404 or 410 answer wraps push.ErrTargetGone; 429 and 5xx are retried.
func (s *Sender) Send(ctx context.Context, t store.Target, n push.Notification) error {
	u, err := url.Parse(t.Token)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("webpush: endpoint is not an http(s) URL: %w", push.ErrTargetGone)
	}
	uaPublic, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(t.P256DH, "="))
	if err != nil {
		return fmt.Errorf("webpush: p256dh: %w", err)
	}
	auth, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(t.Auth, "="))
	if err != nil {
		return fmt.Errorf("webpush: auth: %w", err)
	}
	plain, err := json.Marshal(payload{MessageID: n.MessageID, Type: n.Type})
	if err != nil {
		return fmt.Errorf("webpush: payload: %w", err)
	}
	body, err := Encrypt(plain, uaPublic, auth)
	if err != nil {
		return err
	}
	origin := u.Scheme + "://" + u.Host
	topic := push.CollapseKey(n.Recipient)
	return s.policy.Do(ctx, func(ctx context.Context) error {
		token, err := s.token(origin)
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.Token, bytes.NewReader(body))
		if err != nil {
			return fmt.Errorf("webpush: request: %w", err)
		}
		req.Header.Set("TTL", strconv.FormatInt(int64(s.cfg.TTL/time.Second), 10))
		req.Header.Set("Urgency", s.cfg.Urgency)
		req.Header.Set("Topic", topic)
		req.Header.Set("Content-Encoding", "aes128gcm")
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("Authorization", "vapid t="+token+", k="+s.pub)
		resp, err := s.client.Do(req)
		if err != nil {
			// The endpoint's path identifies the subscription: errors name
			// its origin only.
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			err = fmt.Errorf("webpush: post to %s: %w", origin, err)
			if ctx.Err() != nil || egress.Refused(err) {
				return err // an address refused now is refused on a retry too
			}
			return &retry.Temporary{Err: err}
		}
		defer resp.Body.Close()
		snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		switch code := resp.StatusCode; {
		case code >= 200 && code < 300:
			return nil
		case code >= 300 && code < 400:
			// Redirects are not followed: a push service answers a push
			// itself, and a redirect could point anywhere.
			return fmt.Errorf("webpush: push service at %s answered %d, a redirect, which is not followed", origin, code)
		case code == http.StatusNotFound || code == http.StatusGone:
			return fmt.Errorf("webpush: subscription answered %d: %w", code, push.ErrTargetGone)
		case code == http.StatusTooManyRequests || code >= 500:
			return &retry.Temporary{
				Err:        fmt.Errorf("webpush: push service answered %d: %s", code, oneLine(snippet)),
				RetryAfter: retry.RetryAfter(resp.Header, s.cfg.Now()),
			}
		default:
			return fmt.Errorf("webpush: push service answered %d: %s", code, oneLine(snippet))
		}
	})
}

// token returns a VAPID JWT for origin, reusing one until half its
// lifetime is left.
func (s *Sender) token(origin string) (string, error) {
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if tok, ok := s.tokens[origin]; ok && tok.exp.Sub(now) > s.cfg.TokenLifetime/2 {
		return tok.jwt, nil
	}
	exp := now.Add(s.cfg.TokenLifetime)
	j := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{
		"aud": origin,
		"exp": exp.Unix(),
		"sub": s.cfg.Subject,
	})
	signed, err := j.SignedString(s.key)
	if err != nil {
		return "", fmt.Errorf("webpush: sign vapid token: %w", err)
	}
	if len(s.tokens) > 1024 {
		clear(s.tokens) // bounded: push services are few
	}
	s.tokens[origin] = vapidToken{jwt: signed, exp: exp}
	return signed, nil
}

func oneLine(b []byte) string {
	s := strings.Join(strings.Fields(string(b)), " ")
	if s == "" {
		return "(no body)"
	}
	return s
}
