package pushtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/go-routing-service/routingservice/internal/push"
	"github.com/go-routing-service/routingservice/internal/push/apns"
)

// APNsRequest is one push the APNs stand-in received.
type APNsRequest struct {
	Token      string
	MessageID  string
	Type       string
	PushType   string
	Priority   int
	CollapseID string
	Expiration time.Time
	// Alert is true for an alert push (aps.alert set).
	Alert bool
	// TokenIssuedAt is the iat of the provider token used.
	TokenIssuedAt time.Time
	Status        int
}

// APNs is a stand-in for the APNs provider API: an HTTP/2 TLS server that
// verifies the ES256 provider token with the public half of the key it
// generated, the headers and the body.
type APNs struct {
	t       testing.TB
	srv     *httptest.Server
	key     *ecdsa.PrivateKey
	keyFile string
	rec     recorder[APNsRequest]

	mu  sync.Mutex
	now func() time.Time
}

// Identity of the stand-in's key and app.
const (
	APNsKeyID  = "PUSHTEST01"
	APNsTeamID = "TEAMTEST01"
	APNsTopic  = "com.example.routing"
)

// NewAPNs starts an APNs stand-in that lives as long as t, with a freshly
// generated .p8 key.
func NewAPNs(t testing.TB) *APNs {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("pushtest: p256 key: %v", err)
	}
	a := &APNs{t: t, key: key, now: time.Now}
	a.keyFile = filepath.Join(t.TempDir(), "AuthKey_"+APNsKeyID+".p8")
	if err := os.WriteFile(a.keyFile, P8(t, key), 0o600); err != nil {
		t.Fatalf("pushtest: key file: %v", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /3/device/{token}", a.serve)
	a.srv = httptest.NewUnstartedServer(mux)
	a.srv.EnableHTTP2 = true
	a.srv.StartTLS()
	t.Cleanup(a.srv.Close)
	return a
}

// P8 encodes key as a .p8 file (PKCS#8 PEM).
func P8(t testing.TB, key *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("pushtest: marshal key: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// NewAPNsToken returns a random device token (64 hex digits).
func NewAPNsToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Config returns what an apns.Sender needs to reach the stand-in: its own
// HTTP/2 transport trusting the stand-in's certificate.
func (a *APNs) Config() apns.Config {
	return apns.Config{
		APNs: push.APNs{KeyFile: a.keyFile,
			KeyID:    APNsKeyID,
			TeamID:   APNsTeamID,
			Topic:    APNsTopic,
			Endpoint: a.srv.URL},
		RootCAs:    a.RootCAs(),
		HTTPClient: localClient(a.Certificate()),
	}
}

// RootCAs trusts the stand-in's certificate.
func (a *APNs) RootCAs() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(a.srv.Certificate())
	return pool
}

// SetNow sets the stand-in's clock, against which provider tokens expire
// after an hour.
func (a *APNs) SetNow(now func() time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.now = now
}

// Script queues replies for the next requests to device token.
func (a *APNs) Script(token string, replies ...Reply) { a.rec.script(token, replies) }

// Requests returns every well-formed push received, in order.
func (a *APNs) Requests() []APNsRequest { return a.rec.requests() }

// Delivered returns the pushes answered 200, in order.
func (a *APNs) Delivered() []APNsRequest { return a.rec.deliveredCopy() }

// WaitDelivered waits until at least n pushes were answered 200.
func (a *APNs) WaitDelivered(t testing.TB, n int) []APNsRequest {
	t.Helper()
	return a.rec.wait(t, n)
}

func (a *APNs) fail(w http.ResponseWriter, status int, reason, format string, args ...any) {
	a.t.Errorf("pushtest apns: %s", fmt.Sprintf(format, args...))
	writeReason(w, status, reason)
}

func writeReason(w http.ResponseWriter, status int, reason string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	body := map[string]any{"reason": reason}
	if status == http.StatusGone {
		body["timestamp"] = time.Now().UnixMilli()
	}
	_ = json.NewEncoder(w).Encode(body)
}

func (a *APNs) serve(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	now := a.now()
	a.mu.Unlock()
	if r.ProtoMajor != 2 {
		a.fail(w, 400, "BadRequest", "request over %s, APNs needs HTTP/2", r.Proto)
		return
	}
	var req APNsRequest
	req.Token = r.PathValue("token")
	if _, err := hex.DecodeString(req.Token); err != nil || len(req.Token) < 64 {
		a.fail(w, 400, "BadDeviceToken", "device token %q is not hex", req.Token)
		return
	}
	bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "bearer ")
	if !ok {
		a.fail(w, 403, "MissingProviderToken", "no bearer provider token")
		return
	}
	claims := jwt.MapClaims{}
	tok, err := jwt.ParseWithClaims(bearer, claims, func(*jwt.Token) (any, error) { return &a.key.PublicKey, nil },
		jwt.WithValidMethods([]string{"ES256"}), jwt.WithIssuer(APNsTeamID), jwt.WithoutClaimsValidation())
	if err != nil {
		a.fail(w, 403, "InvalidProviderToken", "provider token: %v", err)
		return
	}
	if kid, _ := tok.Header["kid"].(string); kid != APNsKeyID {
		a.fail(w, 403, "InvalidProviderToken", "provider token kid %q, want %q", kid, APNsKeyID)
		return
	}
	iat, err := claims.GetIssuedAt()
	if err != nil || iat == nil {
		a.fail(w, 403, "InvalidProviderToken", "provider token without iat")
		return
	}
	req.TokenIssuedAt = iat.Time
	if iat.After(now.Add(time.Minute)) {
		a.fail(w, 403, "InvalidProviderToken", "provider token issued in the future (%s > %s)", iat.Time, now)
		return
	}
	if now.Sub(iat.Time) > time.Hour {
		writeReason(w, 403, "ExpiredProviderToken") // what APNs answers; the sender must refresh
		return
	}
	if topic := r.Header.Get("apns-topic"); topic != APNsTopic {
		a.fail(w, 400, "BadTopic", "apns-topic %q, want %q", topic, APNsTopic)
		return
	}
	req.PushType = r.Header.Get("apns-push-type")
	req.Priority, _ = strconv.Atoi(r.Header.Get("apns-priority"))
	switch {
	case req.PushType == "background" && req.Priority == 5:
	case req.PushType == "alert" && (req.Priority == 5 || req.Priority == 10):
	default:
		a.fail(w, 400, "BadPriority", "apns-push-type %q with apns-priority %q", req.PushType, r.Header.Get("apns-priority"))
		return
	}
	req.CollapseID = r.Header.Get("apns-collapse-id")
	if req.CollapseID == "" || len(req.CollapseID) > 64 {
		a.fail(w, 400, "BadCollapseId", "apns-collapse-id %q missing or over 64 bytes", req.CollapseID)
		return
	}
	exp, err := strconv.ParseInt(r.Header.Get("apns-expiration"), 10, 64)
	if err != nil || exp < 0 {
		a.fail(w, 400, "BadExpirationDate", "apns-expiration %q", r.Header.Get("apns-expiration"))
		return
	}
	req.Expiration = time.Unix(exp, 0)
	var body map[string]json.RawMessage
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&body); err != nil {
		a.fail(w, 400, "BadPayload", "body: %v", err)
		return
	}
	for k := range body {
		if k != "aps" && k != "message_id" && k != "type" {
			a.fail(w, 400, "BadPayload", "body has key %q (only aps, message_id, type)", k)
			return
		}
	}
	var aps map[string]any
	_ = json.Unmarshal(body["aps"], &aps)
	_ = json.Unmarshal(body["message_id"], &req.MessageID)
	_ = json.Unmarshal(body["type"], &req.Type)
	if req.MessageID == "" {
		a.fail(w, 400, "BadPayload", "message_id missing")
		return
	}
	_, req.Alert = aps["alert"]
	ca, _ := aps["content-available"].(float64)
	switch req.PushType {
	case "background":
		if ca != 1 || len(aps) != 1 {
			a.fail(w, 400, "BadPayload", "background aps = %v, want only content-available 1", aps)
			return
		}
	case "alert":
		if !req.Alert {
			a.fail(w, 400, "BadPayload", "alert push without aps.alert")
			return
		}
	}
	if reply, ok := a.rec.next(req.Token); ok {
		req.Status = reply.Status
		a.rec.record(req, false)
		if reply.RetryAfter != "" {
			w.Header().Set("Retry-After", reply.RetryAfter)
		}
		writeReason(w, reply.Status, reply.Reason)
		return
	}
	req.Status = 200
	a.rec.record(req, true)
	w.Header().Set("apns-id", strings.ToUpper(rand.Text()))
	w.WriteHeader(http.StatusOK)
}
