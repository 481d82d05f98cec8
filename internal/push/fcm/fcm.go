// Package fcm sends push notifications through Firebase Cloud Messaging's
// HTTP v1 API, authenticated with an OAuth2 access token obtained for a
// service account (golang.org/x/oauth2/google).
package fcm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"
	"golang.org/x/oauth2/jwt"

	"github.com/go-routing-service/routingservice/internal/push"
	"github.com/go-routing-service/routingservice/internal/push/egress"
	"github.com/go-routing-service/routingservice/internal/push/internal/retry"
	"github.com/go-routing-service/routingservice/internal/store"
)

// Scope is the OAuth2 scope of the FCM HTTP v1 API.
const Scope = "https://www.googleapis.com/auth/firebase.messaging"

// DefaultEndpoint is the FCM API's base URL.
const DefaultEndpoint = "https://fcm.googleapis.com"

// Config configures a Sender. Zero fields take the defaults.
type Config struct {
	// FCM holds push.fcm.* of config.yaml (Enabled is the caller's):
	// ProjectID is the Firebase project (default: the credentials'
	// project_id); CredentialsFile the path of a service-account JSON
	// key; Endpoint the API's base URL (default DefaultEndpoint); TokenURL
	// overrides the credentials' token_uri.
	push.FCM
	// CredentialsJSON, when set, is the key's content instead of
	// CredentialsFile.
	CredentialsJSON []byte
	// MaxRetries after UNAVAILABLE (503), INTERNAL (500) or QUOTA_EXCEEDED
	// (429) answers (default 0); MinRetryDelay and MaxRetryDelay bound the
	// backoff (a longer Retry-After gives up).
	MaxRetries    int
	MinRetryDelay time.Duration
	MaxRetryDelay time.Duration
	// HTTPClient sends API and token requests (nil: an egress client, which
	// refuses non-public addresses and redirects).
	HTTPClient *http.Client
	// Wait waits between retries (nil: a timer).
	Wait func(ctx context.Context, d time.Duration) error
}

// Sender delivers notifications to FCM registration tokens of Android
// ("android") and iOS ("ios") apps. Safe for concurrent use.
type Sender struct {
	url    string
	jwt    *jwt.Config
	client *http.Client
	policy retry.Policy

	// lock guards token; a channel so that waiting honours the context.
	lock  chan struct{}
	token *oauth2.Token
}

// New returns a Sender, reading the credentials.
func New(cfg Config) (*Sender, error) {
	creds := cfg.CredentialsJSON
	if creds == nil {
		if cfg.CredentialsFile == "" {
			return nil, errors.New("fcm: credentials_file is required")
		}
		b, err := os.ReadFile(cfg.CredentialsFile)
		if err != nil {
			return nil, fmt.Errorf("fcm: credentials: %w", err)
		}
		creds = b
	}
	conf, err := google.JWTConfigFromJSON(creds, Scope)
	if err != nil {
		return nil, fmt.Errorf("fcm: credentials: %w", err)
	}
	if cfg.TokenURL != "" {
		conf.TokenURL = cfg.TokenURL
	}
	project := cfg.ProjectID
	if project == "" {
		var f struct {
			ProjectID string `json:"project_id"`
		}
		_ = json.Unmarshal(creds, &f)
		project = f.ProjectID
	}
	if project == "" {
		return nil, errors.New("fcm: project_id is required")
	}
	endpoint := cfg.Endpoint
	if endpoint == "" {
		endpoint = DefaultEndpoint
	}
	client := cfg.HTTPClient
	if client == nil {
		client = egress.NewClient(egress.Options{})
	}
	return &Sender{
		url:    strings.TrimRight(endpoint, "/") + "/v1/projects/" + url.PathEscape(project) + "/messages:send",
		jwt:    conf,
		client: client,
		policy: retry.Policy{MaxRetries: cfg.MaxRetries, MinDelay: cfg.MinRetryDelay, MaxDelay: cfg.MaxRetryDelay, Wait: cfg.Wait},
		lock:   make(chan struct{}, 1),
	}, nil
}

// Platforms returns ["android", "ios"].
func (s *Sender) Platforms() []string { return []string{"android", "ios"} }

type message struct {
	Message body `json:"message"`
}

type body struct {
	Token   string            `json:"token"`
	Data    map[string]string `json:"data"`
	Android *android          `json:"android,omitempty"`
	APNs    *apnsConfig       `json:"apns,omitempty"`
}

type android struct {
	Priority    string `json:"priority"`
	CollapseKey string `json:"collapse_key"`
}

type apnsConfig struct {
	Headers map[string]string `json:"headers"`
	Payload map[string]any    `json:"payload"`
}

// apiError is the error body of the FCM v1 API.
type apiError struct {
	Error struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Status  string `json:"status"`
		Details []struct {
			Type            string `json:"@type"`
			ErrorCode       string `json:"errorCode"`
			FieldViolations []struct {
				Field string `json:"field"`
			} `json:"fieldViolations"`
		} `json:"details"`
	} `json:"error"`
}

// Send posts a data-only, high-priority message carrying n's message id and
// type to the registration token t.Token. UNREGISTERED and an
// INVALID_ARGUMENT about the token wrap push.ErrTargetGone; UNAVAILABLE,
// INTERNAL and QUOTA_EXCEEDED are retried.
func (s *Sender) Send(ctx context.Context, t store.Target, n push.Notification) error {
	m := body{Token: t.Token, Data: map[string]string{"message_id": n.MessageID, "type": n.Type}}
	collapse := push.CollapseKey(n.Recipient)
	switch t.Platform {
	case "android":
		m.Android = &android{Priority: "HIGH", CollapseKey: collapse}
	case "ios":
		m.APNs = &apnsConfig{
			Headers: map[string]string{"apns-priority": "5", "apns-push-type": "background", "apns-collapse-id": collapse},
			Payload: map[string]any{"aps": map[string]any{"content-available": 1}},
		}
	default:
		return fmt.Errorf("fcm: platform %q is not served", t.Platform)
	}
	raw, err := json.Marshal(message{Message: m})
	if err != nil {
		return fmt.Errorf("fcm: body: %w", err)
	}
	reauthorized := false
	return s.policy.Do(ctx, func(ctx context.Context) error {
		for {
			tok, err := s.accessToken(ctx, false)
			if err != nil {
				if ctx.Err() != nil {
					return err
				}
				return &retry.Temporary{Err: err}
			}
			status, header, e, err := s.post(ctx, tok, raw)
			if err != nil {
				if ctx.Err() != nil {
					return err
				}
				return &retry.Temporary{Err: err}
			}
			if status == http.StatusOK {
				return nil
			}
			code := errorCode(e)
			switch {
			case status == http.StatusUnauthorized && !reauthorized:
				// The access token was revoked or expired early: get another once.
				reauthorized = true
				if _, err := s.accessToken(ctx, true); err != nil {
					return err
				}
				continue
			case code == "UNREGISTERED", code == "INVALID_ARGUMENT" && aboutToken(e):
				return fmt.Errorf("fcm: %d %s: %w", status, code, push.ErrTargetGone)
			case code == "UNAVAILABLE", code == "INTERNAL", code == "QUOTA_EXCEEDED",
				status == http.StatusServiceUnavailable, status == http.StatusInternalServerError, status == http.StatusTooManyRequests:
				return &retry.Temporary{Err: fmt.Errorf("fcm: %d %s", status, code), RetryAfter: retry.RetryAfter(header, time.Now())}
			default:
				return fmt.Errorf("fcm: %d %s: %s", status, code, e.Error.Message)
			}
		}
	})
}

func (s *Sender) post(ctx context.Context, tok *oauth2.Token, raw []byte) (int, http.Header, apiError, error) {
	var e apiError
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(raw))
	if err != nil {
		return 0, nil, e, fmt.Errorf("fcm: request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	tok.SetAuthHeader(req)
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, e, fmt.Errorf("fcm: post: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<10))
	if resp.StatusCode != http.StatusOK {
		_ = json.Unmarshal(b, &e)
	}
	return resp.StatusCode, resp.Header, e, nil
}

// errorCode is the FCM error code of e (the FcmError detail's errorCode,
// else the canonical status).
func errorCode(e apiError) string {
	for _, d := range e.Error.Details {
		if strings.HasSuffix(d.Type, "google.firebase.fcm.v1.FcmError") && d.ErrorCode != "" {
			return d.ErrorCode
		}
	}
	if e.Error.Status != "" {
		return e.Error.Status
	}
	return "(no error code)"
}

// aboutToken reports whether an INVALID_ARGUMENT concerns the registration
// token (and not the message we built, which must not cost the user their
// target).
func aboutToken(e apiError) bool {
	for _, d := range e.Error.Details {
		for _, v := range d.FieldViolations {
			if v.Field == "message.token" {
				return true
			}
		}
	}
	return strings.Contains(strings.ToLower(e.Error.Message), "registration token")
}

// accessToken returns a valid access token, fetching a new one (with ctx)
// when the cached one is near expiry or force is set.
func (s *Sender) accessToken(ctx context.Context, force bool) (*oauth2.Token, error) {
	select {
	case s.lock <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("fcm: access token: %w", ctx.Err())
	}
	defer func() { <-s.lock }()
	if !force && s.token != nil && s.token.Expiry.After(time.Now().Add(time.Minute)) {
		return s.token, nil
	}
	tok, err := s.jwt.TokenSource(context.WithValue(ctx, oauth2.HTTPClient, s.client)).Token()
	if err != nil {
		return nil, fmt.Errorf("fcm: access token: %w", err)
	}
	s.token = tok
	return tok, nil
}
