package web

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestBearerToken(t *testing.T) {
	cases := []struct {
		name       string
		header     string
		query      string
		allowQuery bool
		want       string
	}{
		{"bearer header", "Bearer abc", "", false, "abc"},
		{"scheme in any case", "bEaReR  abc ", "", false, "abc"},
		{"other scheme", "Basic abc", "", false, ""},
		{"header wins over query", "Basic abc", "q", true, ""},
		{"query when allowed", "", "q", true, "q"},
		{"query when not allowed", "", "q", false, ""},
		{"nothing", "", "", true, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/?access_token="+tc.query, nil)
			if tc.header != "" {
				r.Header.Set("Authorization", tc.header)
			}
			if got := BearerToken(r, tc.allowQuery); got != tc.want {
				t.Fatalf("BearerToken = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestRequireAuth(t *testing.T) {
	authenticate := func(tok string) (string, error) {
		if tok != "good" {
			return "", errors.New("bad signature")
		}
		return "urn:sm:user:alice", nil
	}
	var sub string
	h := RequireAuth(authenticate, func(w http.ResponseWriter, r *http.Request) { sub = Subject(r.Context()) })
	for _, tc := range []struct {
		header string
		status int
		sub    string
	}{
		{"Bearer good", http.StatusOK, "urn:sm:user:alice"},
		{"Bearer forged", http.StatusUnauthorized, ""},
		{"", http.StatusUnauthorized, ""},
	} {
		sub = ""
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		if tc.header != "" {
			r.Header.Set("Authorization", tc.header)
		}
		w := httptest.NewRecorder()
		h(w, r)
		if w.Code != tc.status || sub != tc.sub {
			t.Fatalf("%q: status %d subject %q, want %d %q", tc.header, w.Code, sub, tc.status, tc.sub)
		}
		if tc.status == http.StatusUnauthorized {
			var body struct {
				Error struct{ Code, Message string } `json:"error"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Error.Code != CodeUnauthorized || body.Error.Message == "" {
				t.Fatalf("%q: body %s is not the error shape", tc.header, w.Body)
			}
		}
	}
}

func TestWriteErrorRetryAfter(t *testing.T) {
	w := httptest.NewRecorder()
	e := Errorf(http.StatusServiceUnavailable, CodeBackendUnavailable, "the store is unavailable")
	e.RetryAfter = 2
	WriteError(w, e)
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") != "2" ||
		w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("got %d %v", w.Code, w.Header())
	}
	want := `{"error":{"code":"backend_unavailable","message":"the store is unavailable"}}` + "\n"
	if w.Body.String() != want {
		t.Fatalf("body %q, want %q", w.Body, want)
	}
}
