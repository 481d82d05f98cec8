package pushtest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/go-routing-service/routingservice/internal/push"
	"github.com/go-routing-service/routingservice/internal/push/fcm"
)

// FCMRequest is one message the FCM stand-in received.
type FCMRequest struct {
	// Token is the registration token addressed.
	Token string
	// Platform is "android" (android block) or "ios" (apns block).
	Platform  string
	MessageID string
	Type      string
	// CollapseKey is android.collapse_key or the apns-collapse-id header.
	CollapseKey string
	// Status is what the stand-in answered.
	Status int
}

// FCM is a stand-in for the FCM HTTP v1 API and Google's OAuth2 token
// endpoint. It issues access tokens only for JWT assertions signed with the
// key of the service account it generated, and accepts messages only with
// an access token it issued.
type FCM struct {
	t         testing.TB
	srv       *httptest.Server
	key       *rsa.PrivateKey
	email     string
	projectID string
	credsFile string
	rec       recorder[FCMRequest]

	mu     sync.Mutex
	tokens map[string]bool
	issued int
}

// NewFCM starts an FCM stand-in (TLS) that lives as long as t, with a
// freshly generated service account whose credentials file points its
// token_uri at the stand-in.
func NewFCM(t testing.TB) *FCM {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatalf("pushtest: rsa key: %v", err)
	}
	f := &FCM{t: t, key: key, email: "routing@test-project.iam.gserviceaccount.com", projectID: "test-project", tokens: map[string]bool{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /token", f.serveToken)
	mux.HandleFunc("POST /v1/projects/{project}/{method}", f.serveSend)
	f.srv = httptest.NewTLSServer(mux)
	t.Cleanup(f.srv.Close)
	f.credsFile = filepath.Join(t.TempDir(), "service-account.json")
	if err := os.WriteFile(f.credsFile, f.ServiceAccountJSON(f.TokenURL()), 0o600); err != nil {
		t.Fatalf("pushtest: credentials file: %v", err)
	}
	return f
}

// ServiceAccountJSON returns a service-account key file for the stand-in's
// account with the given token_uri.
func (f *FCM) ServiceAccountJSON(tokenURI string) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(f.key)
	if err != nil {
		f.t.Fatalf("pushtest: marshal key: %v", err)
	}
	b, err := json.Marshal(map[string]string{
		"type":           "service_account",
		"project_id":     f.projectID,
		"private_key_id": "pushtest-key-1",
		"private_key":    string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email":   f.email,
		"client_id":      "100000000000000000001",
		"auth_uri":       "https://accounts.google.com/o/oauth2/auth",
		"token_uri":      tokenURI,
	})
	if err != nil {
		f.t.Fatalf("pushtest: credentials: %v", err)
	}
	return b
}

// URL is the API's base URL (the sender's Endpoint).
func (f *FCM) URL() string { return f.srv.URL }

// TokenURL is the stand-in's OAuth2 token endpoint.
func (f *FCM) TokenURL() string { return f.srv.URL + "/token" }

// ProjectID is the project the stand-in serves.
func (f *FCM) ProjectID() string { return f.projectID }

// Config returns what an fcm.Sender needs to reach the stand-in.
func (f *FCM) Config() fcm.Config {
	return fcm.Config{
		FCM: push.FCM{ProjectID: f.projectID,
			CredentialsFile: f.credsFile,
			Endpoint:        f.srv.URL},
		HTTPClient: localClient(f.srv.Certificate()),
	}
}

// Script queues replies for the next requests to token; when they are
// spent, requests are delivered (200).
func (f *FCM) Script(token string, replies ...Reply) { f.rec.script(token, replies) }

// Requests returns every well-formed message received, in order.
func (f *FCM) Requests() []FCMRequest { return f.rec.requests() }

// Delivered returns the messages answered 200, in order.
func (f *FCM) Delivered() []FCMRequest { return f.rec.deliveredCopy() }

// WaitDelivered waits until at least n messages were answered 200.
func (f *FCM) WaitDelivered(t testing.TB, n int) []FCMRequest {
	t.Helper()
	return f.rec.wait(t, n)
}

// TokensIssued is the number of access tokens issued.
func (f *FCM) TokensIssued() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.issued
}

// RevokeTokens makes every access token issued so far invalid (401).
func (f *FCM) RevokeTokens() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.tokens)
}

func (f *FCM) violation(w http.ResponseWriter, status int, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	f.t.Errorf("pushtest fcm: %s", msg)
	http.Error(w, msg, status)
}

func (f *FCM) serveToken(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		f.violation(w, 400, "token request form: %v", err)
		return
	}
	if g := r.PostForm.Get("grant_type"); g != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
		f.violation(w, 400, "grant_type %q", g)
		return
	}
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(r.PostForm.Get("assertion"), claims, func(*jwt.Token) (any, error) {
		return &f.key.PublicKey, nil
	}, jwt.WithValidMethods([]string{"RS256"}), jwt.WithIssuer(f.email), jwt.WithAudience(f.TokenURL()),
		jwt.WithExpirationRequired(), jwt.WithIssuedAt())
	if err != nil {
		f.violation(w, 400, "assertion: %v", err)
		return
	}
	if scope, _ := claims["scope"].(string); !strings.Contains(" "+scope+" ", " "+fcm.Scope+" ") {
		f.violation(w, 400, "assertion scope %q lacks %s", scope, fcm.Scope)
		return
	}
	iat, _ := claims.GetIssuedAt()
	exp, _ := claims.GetExpirationTime()
	if iat == nil || exp.Sub(iat.Time) > time.Hour {
		f.violation(w, 400, "assertion lifetime over an hour")
		return
	}
	tok := "pushtest-at-" + rand.Text()
	f.mu.Lock()
	f.tokens[tok] = true
	f.issued++
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": 3600})
}

// fcmErrorStatus maps FCM error codes to their canonical status.
var fcmErrorStatus = map[string]string{
	"UNREGISTERED":           "NOT_FOUND",
	"INVALID_ARGUMENT":       "INVALID_ARGUMENT",
	"QUOTA_EXCEEDED":         "RESOURCE_EXHAUSTED",
	"UNAVAILABLE":            "UNAVAILABLE",
	"INTERNAL":               "INTERNAL",
	"SENDER_ID_MISMATCH":     "PERMISSION_DENIED",
	"THIRD_PARTY_AUTH_ERROR": "UNAUTHENTICATED",
}

func writeFCMError(w http.ResponseWriter, status int, code, message string) {
	details := []map[string]any{{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}}
	if code == "INVALID_ARGUMENT" {
		details = append(details, map[string]any{
			"@type":           "type.googleapis.com/google.rpc.BadRequest",
			"fieldViolations": []map[string]string{{"field": "message.token", "description": "Invalid registration token"}},
		})
	}
	canonical := fcmErrorStatus[code]
	if canonical == "" {
		canonical = code
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"code": status, "message": message, "status": canonical, "details": details,
	}})
}

func (f *FCM) serveSend(w http.ResponseWriter, r *http.Request) {
	if r.PathValue("method") != "messages:send" || r.PathValue("project") != f.projectID {
		f.violation(w, 404, "unexpected path %s", r.URL.Path)
		return
	}
	bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	f.mu.Lock()
	known := ok && f.tokens[bearer]
	f.mu.Unlock()
	if !known {
		writeFCMError(w, 401, "THIRD_PARTY_AUTH_ERROR", "Request had invalid authentication credentials.")
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		f.violation(w, 400, "content type %q", ct)
		return
	}
	var body struct {
		Message map[string]json.RawMessage `json:"message"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		f.violation(w, 400, "body: %v", err)
		return
	}
	req, err := checkFCMMessage(body.Message)
	if err != nil {
		f.violation(w, 400, "%v", err)
		return
	}
	if reply, ok := f.rec.next(req.Token); ok {
		req.Status = reply.Status
		f.rec.record(req, false)
		if reply.RetryAfter != "" {
			w.Header().Set("Retry-After", reply.RetryAfter)
		}
		msg := "scripted error"
		if reply.Reason == "INVALID_ARGUMENT" {
			msg = "The registration token is not a valid FCM registration token"
		}
		writeFCMError(w, reply.Status, reply.Reason, msg)
		return
	}
	req.Status = 200
	f.rec.record(req, true)
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	_ = json.NewEncoder(w).Encode(map[string]string{"name": "projects/" + f.projectID + "/messages/0:" + rand.Text()})
}

// checkFCMMessage checks a data-only, high-priority message with a
// collapse key and only message_id and type as data.
func checkFCMMessage(m map[string]json.RawMessage) (FCMRequest, error) {
	var req FCMRequest
	for k := range m {
		switch k {
		case "token", "data", "android", "apns":
		default:
			return req, fmt.Errorf("message has field %q (want a data-only message: token, data, android or apns)", k)
		}
	}
	if err := json.Unmarshal(m["token"], &req.Token); err != nil || req.Token == "" {
		return req, fmt.Errorf("message.token missing")
	}
	var data map[string]string
	if err := json.Unmarshal(m["data"], &data); err != nil {
		return req, fmt.Errorf("message.data must map strings to strings: %v", err)
	}
	for k := range data {
		if k != "message_id" && k != "type" {
			return req, fmt.Errorf("message.data has key %q (only message_id and type)", k)
		}
	}
	req.MessageID, req.Type = data["message_id"], data["type"]
	if req.MessageID == "" {
		return req, fmt.Errorf("message.data.message_id missing")
	}
	_, hasAndroid := m["android"]
	_, hasAPNs := m["apns"]
	switch {
	case hasAndroid && !hasAPNs:
		req.Platform = "android"
		var a map[string]any
		if err := json.Unmarshal(m["android"], &a); err != nil {
			return req, fmt.Errorf("message.android: %v", err)
		}
		if a["priority"] != "HIGH" {
			return req, fmt.Errorf("message.android.priority = %v, want HIGH", a["priority"])
		}
		if _, ok := a["notification"]; ok {
			return req, fmt.Errorf("message.android.notification set on a data-only message")
		}
		req.CollapseKey, _ = a["collapse_key"].(string)
	case hasAPNs && !hasAndroid:
		req.Platform = "ios"
		var a struct {
			Headers map[string]string `json:"headers"`
			Payload struct {
				APS map[string]any `json:"aps"`
			} `json:"payload"`
		}
		if err := json.Unmarshal(m["apns"], &a); err != nil {
			return req, fmt.Errorf("message.apns: %v", err)
		}
		if a.Headers["apns-priority"] != "5" || a.Headers["apns-push-type"] != "background" {
			return req, fmt.Errorf("message.apns.headers = %v, want apns-priority 5 and apns-push-type background", a.Headers)
		}
		if ca, _ := a.Payload.APS["content-available"].(float64); ca != 1 || len(a.Payload.APS) != 1 {
			return req, fmt.Errorf("message.apns.payload.aps = %v, want only content-available 1", a.Payload.APS)
		}
		req.CollapseKey = a.Headers["apns-collapse-id"]
	default:
		return req, fmt.Errorf("message needs exactly one of android and apns")
	}
	if req.CollapseKey == "" || len(req.CollapseKey) > 64 {
		return req, fmt.Errorf("collapse key %q missing or longer than 64 bytes", req.CollapseKey)
	}
	return req, nil
}
