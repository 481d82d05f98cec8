// Package apns sends push notifications through the Apple Push
// Notification service over HTTP/2, authenticated with a provider token (an
// ES256 JWT signed with the team's .p8 key).
package apns

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"os"
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

// Endpoints of the APNs provider API.
const (
	ProductionEndpoint = "https://api.push.apple.com"
	SandboxEndpoint    = "https://api.sandbox.push.apple.com"
)

// Push types.
const (
	PushTypeBackground = "background"
	PushTypeAlert      = "alert"
)

// Config configures a Sender. Zero fields take the defaults.
type Config struct {
	// APNs holds push.apns.* of config.yaml (Enabled is the caller's):
	// KeyFile is the path of the .p8 (PKCS#8 PEM) signing key; KeyID (the
	// JWT "kid") and TeamID (its "iss") identify the key; Topic is the
	// app's bundle id (the apns-topic header); Endpoint is
	// ProductionEndpoint (default) or SandboxEndpoint; PushType is
	// background (default: a silent content-available push, priority 5)
	// or alert (a generic localized alert, no content); Priority is 5
	// (default) or, for alert pushes only, 10.
	push.APNs
	// Key, when set, is the signing key's content instead of KeyFile.
	Key []byte
	// Expiration is how long APNs keeps an undelivered push (default 24h).
	Expiration time.Duration
	// AlertLocKey is the alert's localization key (default NEW_MESSAGE).
	AlertLocKey string
	// TokenRefresh is the age at which the provider token is replaced
	// (default 50m; APNs refuses tokens older than an hour).
	TokenRefresh time.Duration
	// MaxRetries after a 429, 500 or 503 answer (default 0); MinRetryDelay
	// and MaxRetryDelay bound the backoff.
	MaxRetries    int
	MinRetryDelay time.Duration
	MaxRetryDelay time.Duration
	// HTTPClient must speak HTTP/2 (nil: an egress client, which refuses
	// non-public addresses and redirects, trusting RootCAs, or the system
	// roots when RootCAs is nil).
	HTTPClient *http.Client
	RootCAs    *x509.CertPool
	// Wait waits between retries (nil: a timer); Now is the clock of the
	// provider token (nil: time.Now).
	Wait func(ctx context.Context, d time.Duration) error
	Now  func() time.Time
}

// Sender delivers notifications to APNs device tokens. Safe for concurrent use.
type Sender struct {
	cfg    Config
	key    *ecdsa.PrivateKey
	client *http.Client
	policy retry.Policy

	mu       sync.Mutex
	token    string
	issuedAt time.Time
}

// New returns a Sender, loading the key and checking the configuration.
func New(cfg Config) (*Sender, error) {
	keyPEM := cfg.Key
	if keyPEM == nil {
		if cfg.KeyFile == "" {
			return nil, errors.New("apns: key_file is required")
		}
		b, err := os.ReadFile(cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("apns: key file: %w", err)
		}
		keyPEM = b
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, err
	}
	if cfg.KeyID == "" || cfg.TeamID == "" || cfg.Topic == "" {
		return nil, errors.New("apns: key_id, team_id and topic are required")
	}
	if cfg.Endpoint == "" {
		cfg.Endpoint = ProductionEndpoint
	}
	cfg.Endpoint = strings.TrimRight(cfg.Endpoint, "/")
	switch cfg.PushType {
	case "":
		cfg.PushType = PushTypeBackground
	case PushTypeBackground, PushTypeAlert:
	default:
		return nil, fmt.Errorf("apns: push_type must be background or alert, got %q", cfg.PushType)
	}
	switch {
	case cfg.Priority == 0:
		cfg.Priority = 5
	case cfg.Priority == 5:
	case cfg.Priority == 10 && cfg.PushType == PushTypeAlert:
	default:
		return nil, fmt.Errorf("apns: priority must be 5, or 10 for alert pushes, got %d", cfg.Priority)
	}
	if cfg.Expiration <= 0 {
		cfg.Expiration = 24 * time.Hour
	}
	if cfg.AlertLocKey == "" {
		cfg.AlertLocKey = "NEW_MESSAGE"
	}
	if cfg.TokenRefresh <= 0 || cfg.TokenRefresh >= time.Hour {
		cfg.TokenRefresh = 50 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	client := cfg.HTTPClient
	if client == nil {
		client = egress.NewClient(egress.Options{RootCAs: cfg.RootCAs})
	}
	return &Sender{
		cfg:    cfg,
		key:    key,
		client: client,
		policy: retry.Policy{MaxRetries: cfg.MaxRetries, MinDelay: cfg.MinRetryDelay, MaxDelay: cfg.MaxRetryDelay, Wait: cfg.Wait},
	}, nil
}

// ParseKey decodes a .p8 file: a PEM "PRIVATE KEY" block holding a PKCS#8
// P-256 key.
func ParseKey(p8 []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(p8)
	if block == nil {
		return nil, errors.New("apns: key is not PEM")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("apns: key: %w", err)
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || ec.Curve.Params().Name != "P-256" {
		return nil, errors.New("apns: key is not a P-256 ECDSA key")
	}
	return ec, nil
}

// Platforms returns ["apns"].
func (s *Sender) Platforms() []string { return []string{"apns"} }

type aps struct {
	ContentAvailable int    `json:"content-available,omitempty"`
	Alert            *alert `json:"alert,omitempty"`
}

type alert struct {
	LocKey string `json:"loc-key"`
}

type body struct {
	APS       aps    `json:"aps"`
	MessageID string `json:"message_id"`
	Type      string `json:"type"`
}

// reason is the JSON body of an APNs error answer.
type reason struct {
	Reason string `json:"reason"`
}

// Send posts n to the device token t.Token. 410 Unregistered and 400
// BadDeviceToken wrap push.ErrTargetGone; 429, 500 and 503 are retried; a
// 403 ExpiredProviderToken replaces the provider token and retries once.
func (s *Sender) Send(ctx context.Context, t store.Target, n push.Notification) error {
	if _, err := hex.DecodeString(t.Token); err != nil || t.Token == "" {
		return fmt.Errorf("apns: device token is not hexadecimal: %w", push.ErrTargetGone)
	}
	b := body{MessageID: n.MessageID, Type: n.Type}
	if s.cfg.PushType == PushTypeAlert {
		b.APS.Alert = &alert{LocKey: s.cfg.AlertLocKey}
	} else {
		b.APS.ContentAvailable = 1
	}
	raw, err := json.Marshal(b)
	if err != nil {
		return fmt.Errorf("apns: body: %w", err)
	}
	url := s.cfg.Endpoint + "/3/device/" + t.Token
	collapse := push.CollapseKey(n.Recipient)
	refreshed := false
	return s.policy.Do(ctx, func(ctx context.Context) error {
		token, err := s.providerToken(false)
		if err != nil {
			return err
		}
		for {
			status, header, rsn, err := s.post(ctx, url, token, collapse, raw)
			if err != nil {
				if ctx.Err() != nil || egress.Refused(err) {
					return err
				}
				return &retry.Temporary{Err: err}
			}
			switch {
			case status == http.StatusOK:
				return nil
			case status == http.StatusGone, status == http.StatusBadRequest && rsn == "BadDeviceToken":
				return fmt.Errorf("apns: %d %s: %w", status, rsn, push.ErrTargetGone)
			case status == http.StatusForbidden && rsn == "ExpiredProviderToken" && !refreshed:
				refreshed = true
				if token, err = s.providerToken(true); err != nil {
					return err
				}
				continue
			case status == http.StatusTooManyRequests, status == http.StatusInternalServerError, status == http.StatusServiceUnavailable:
				return &retry.Temporary{
					Err:        fmt.Errorf("apns: %d %s", status, rsn),
					RetryAfter: retry.RetryAfter(header, s.cfg.Now()),
				}
			default:
				return fmt.Errorf("apns: %d %s", status, rsn)
			}
		}
	})
}

func (s *Sender) post(ctx context.Context, url, token, collapse string, raw []byte) (int, http.Header, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(raw))
	if err != nil {
		return 0, nil, "", fmt.Errorf("apns: request: %w", err)
	}
	req.Header.Set("authorization", "bearer "+token)
	req.Header.Set("apns-topic", s.cfg.Topic)
	req.Header.Set("apns-push-type", s.cfg.PushType)
	req.Header.Set("apns-priority", strconv.Itoa(s.cfg.Priority))
	req.Header.Set("apns-collapse-id", collapse)
	req.Header.Set("apns-expiration", strconv.FormatInt(s.cfg.Now().Add(s.cfg.Expiration).Unix(), 10))
	req.Header.Set("content-type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		// The URL's path holds the device token: name the endpoint only.
		var ue *neturl.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return 0, nil, "", fmt.Errorf("apns: post to %s: %w", s.cfg.Endpoint, err)
	}
	defer resp.Body.Close()
	var r reason
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		if json.Unmarshal(b, &r) != nil || r.Reason == "" {
			r.Reason = "(no reason)"
		}
	} else {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1024))
	}
	return resp.StatusCode, resp.Header, r.Reason, nil
}

// providerToken returns the cached provider token, making a new one when
// it is TokenRefresh old (or force is set).
func (s *Sender) providerToken(force bool) (string, error) {
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !force && s.token != "" && now.Sub(s.issuedAt) < s.cfg.TokenRefresh && !now.Before(s.issuedAt) {
		return s.token, nil
	}
	j := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{
		"iss": s.cfg.TeamID,
		"iat": now.Unix(),
	})
	j.Header["kid"] = s.cfg.KeyID
	signed, err := j.SignedString(s.key)
	if err != nil {
		return "", fmt.Errorf("apns: sign provider token: %w", err)
	}
	s.token, s.issuedAt = signed, now
	return signed, nil
}
