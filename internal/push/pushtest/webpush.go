package pushtest

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/go-routing-service/routingservice/internal/push/webpush"
	"github.com/go-routing-service/routingservice/internal/store"
)

// WebPushRequest is one push the Web Push stand-in received and decrypted.
type WebPushRequest struct {
	// Endpoint is the subscription's endpoint (store.Target.Token).
	Endpoint  string
	MessageID string
	Type      string
	TTL       int
	Urgency   string
	Topic     string
	Status    int
}

// WebPush is a stand-in for a browser push service: it verifies the VAPID
// token (signature, aud = the endpoint's origin, exp within 24h, sub) and
// decrypts each aes128gcm body with the subscription's private key and
// auth secret, as the browser would.
type WebPush struct {
	t         testing.TB
	srv       *httptest.Server
	vapidPub  string
	vapidPriv string
	subject   string
	rec       recorder[WebPushRequest]
	mu        sync.Mutex
	subs      map[string]subscription // by id
}

type subscription struct {
	endpoint string
	key      *ecdh.PrivateKey
	auth     []byte
	gone     bool
}

// NewWebPush starts a Web Push stand-in (TLS) that lives as long as t, with
// its own VAPID key pair (see Config).
func NewWebPush(t testing.TB) *WebPush {
	t.Helper()
	pub, priv, err := webpush.GenerateVAPIDKeys()
	if err != nil {
		t.Fatalf("pushtest: vapid keys: %v", err)
	}
	p := &WebPush{t: t, vapidPub: pub, vapidPriv: priv, subject: "mailto:ops@example.com", subs: map[string]subscription{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /push/{id}", p.serve)
	p.srv = httptest.NewTLSServer(mux)
	t.Cleanup(p.srv.Close)
	return p
}

// Config returns what a webpush.Sender needs to reach the stand-in (the
// VAPID key pair the stand-in expects, and a client trusting it).
func (p *WebPush) Config() webpush.Config {
	return webpush.Config{Subject: p.subject, VAPIDPrivateKey: p.vapidPriv, HTTPClient: localClient(p.srv.Certificate())}
}

// VAPIDPublicKey is the public key the stand-in expects in "k=".
func (p *WebPush) VAPIDPublicKey() string { return p.vapidPub }

// NewSubscription makes a browser subscription at the stand-in: a fresh
// P-256 key pair and auth secret, returned as a webpush store.Target.
func (p *WebPush) NewSubscription() store.Target {
	key, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		p.t.Fatalf("pushtest: subscription key: %v", err)
	}
	auth := make([]byte, 16)
	_, _ = rand.Read(auth)
	id := strings.ToLower(rand.Text())
	endpoint := p.srv.URL + "/push/" + id
	p.mu.Lock()
	p.subs[id] = subscription{endpoint: endpoint, key: key, auth: auth}
	p.mu.Unlock()
	return store.Target{
		Platform: "webpush",
		Token:    endpoint,
		P256DH:   base64.RawURLEncoding.EncodeToString(key.PublicKey().Bytes()),
		Auth:     base64.RawURLEncoding.EncodeToString(auth),
	}
}

// Unsubscribe makes the subscription at endpoint answer 410 Gone from now on.
func (p *WebPush) Unsubscribe(endpoint string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, s := range p.subs {
		if s.endpoint == endpoint {
			s.gone = true
			p.subs[id] = s
		}
	}
}

// Script queues replies (Status and RetryAfter) for the next requests to endpoint.
func (p *WebPush) Script(endpoint string, replies ...Reply) { p.rec.script(endpoint, replies) }

// Requests returns every well-formed push received, in order.
func (p *WebPush) Requests() []WebPushRequest { return p.rec.requests() }

// Delivered returns the pushes answered 201, in order.
func (p *WebPush) Delivered() []WebPushRequest { return p.rec.deliveredCopy() }

// WaitDelivered waits until at least n pushes were answered 201.
func (p *WebPush) WaitDelivered(t testing.TB, n int) []WebPushRequest {
	t.Helper()
	return p.rec.wait(t, n)
}

func (p *WebPush) fail(w http.ResponseWriter, status int, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.t.Errorf("pushtest webpush: %s", msg)
	http.Error(w, msg, status)
}

func (p *WebPush) serve(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	sub, ok := p.subs[r.PathValue("id")]
	p.mu.Unlock()
	if !ok {
		http.Error(w, "no such subscription", http.StatusNotFound)
		return
	}
	if sub.gone {
		http.Error(w, "subscription expired", http.StatusGone)
		return
	}
	if err := p.checkVAPID(r); err != nil {
		p.fail(w, http.StatusForbidden, "vapid: %v", err)
		return
	}
	req := WebPushRequest{Endpoint: sub.endpoint, Urgency: r.Header.Get("Urgency"), Topic: r.Header.Get("Topic")}
	ttl, err := strconv.Atoi(r.Header.Get("TTL"))
	if err != nil || ttl < 0 {
		p.fail(w, 400, "TTL header %q missing or not a number of seconds", r.Header.Get("TTL"))
		return
	}
	req.TTL = ttl
	switch req.Urgency {
	case "", "very-low", "low", "normal", "high":
	default:
		p.fail(w, 400, "Urgency %q", req.Urgency)
		return
	}
	if req.Topic != "" {
		if len(req.Topic) > 32 || strings.Trim(req.Topic, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			p.fail(w, 400, "Topic %q is not at most 32 base64url characters", req.Topic)
			return
		}
	}
	if ce := r.Header.Get("Content-Encoding"); ce != "aes128gcm" {
		p.fail(w, 400, "Content-Encoding %q, want aes128gcm", ce)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 4096))
	if err != nil {
		p.fail(w, http.StatusRequestEntityTooLarge, "body: %v", err)
		return
	}
	plain, err := webpush.Decrypt(body, sub.key, sub.auth)
	if err != nil {
		p.fail(w, 400, "decrypt: %v", err)
		return
	}
	var msg map[string]string
	if err := json.Unmarshal(plain, &msg); err != nil {
		p.fail(w, 400, "payload is not a JSON object of strings: %v", err)
		return
	}
	for k := range msg {
		if k != "message_id" && k != "type" {
			p.fail(w, 400, "payload has key %q (only message_id and type)", k)
			return
		}
	}
	req.MessageID, req.Type = msg["message_id"], msg["type"]
	if reply, ok := p.rec.next(sub.endpoint); ok {
		req.Status = reply.Status
		p.rec.record(req, false)
		if reply.RetryAfter != "" {
			w.Header().Set("Retry-After", reply.RetryAfter)
		}
		http.Error(w, "scripted reply", reply.Status)
		return
	}
	req.Status = http.StatusCreated
	p.rec.record(req, true)
	w.Header().Set("Location", p.srv.URL+"/message/"+rand.Text())
	w.WriteHeader(http.StatusCreated)
}

// checkVAPID verifies "Authorization: vapid t=<jwt>, k=<key>" (RFC 8292).
func (p *WebPush) checkVAPID(r *http.Request) error {
	rest, ok := strings.CutPrefix(r.Header.Get("Authorization"), "vapid ")
	if !ok {
		return fmt.Errorf("authorization %q is not the vapid scheme", r.Header.Get("Authorization"))
	}
	var tok, k string
	for part := range strings.SplitSeq(rest, ",") {
		name, value, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch name {
		case "t":
			tok = value
		case "k":
			k = value
		}
	}
	if k != p.vapidPub {
		return fmt.Errorf("k=%q is not the application server key", k)
	}
	raw, err := base64.RawURLEncoding.DecodeString(k)
	if err != nil {
		return fmt.Errorf("k: %w", err)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), raw)
	if err != nil {
		return fmt.Errorf("k: %w", err)
	}
	claims := jwt.MapClaims{}
	_, err = jwt.ParseWithClaims(tok, claims, func(*jwt.Token) (any, error) { return pub, nil },
		jwt.WithValidMethods([]string{"ES256"}), jwt.WithAudience("https://"+r.Host), jwt.WithExpirationRequired())
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	exp, _ := claims.GetExpirationTime()
	if exp.After(time.Now().Add(24 * time.Hour)) {
		return fmt.Errorf("exp %s is more than 24h away", exp.Time)
	}
	if sub, _ := claims["sub"].(string); sub != p.subject {
		return fmt.Errorf("sub %q, want %q", sub, p.subject)
	}
	return nil
}
