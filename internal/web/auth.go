package web

import (
	"context"
	"net/http"
	"strings"
)

// Authenticate verifies a bearer token and returns the caller's URN (the
// token's sub). Its error never reaches the caller (a 401 says only
// "invalid token").
type Authenticate func(token string) (subject string, err error)

type subjectKey struct{}

// Subject returns the authenticated caller's URN stored in ctx by RequireAuth.
func Subject(ctx context.Context) string {
	s, _ := ctx.Value(subjectKey{}).(string)
	return s
}

// WithSubject returns ctx carrying the caller's URN.
func WithSubject(ctx context.Context, sub string) context.Context {
	return context.WithValue(ctx, subjectKey{}, sub)
}

// BearerToken returns the token of "Authorization: Bearer <token>", and, when
// allowQuery is set (WebSocket upgrades from browsers), of the access_token
// query parameter.
func BearerToken(r *http.Request, allowQuery bool) string {
	if h := r.Header.Get("Authorization"); h != "" {
		if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
			return strings.TrimSpace(h[7:])
		}
		return ""
	}
	if allowQuery {
		return r.URL.Query().Get("access_token")
	}
	return ""
}

// Authorize authenticates r; it writes a 401 and returns false on failure.
func Authorize(w http.ResponseWriter, r *http.Request, authenticate Authenticate, allowQuery bool) (string, bool) {
	tok := BearerToken(r, allowQuery)
	if tok == "" {
		WriteError(w, Errorf(http.StatusUnauthorized, CodeUnauthorized, "missing bearer token"))
		return "", false
	}
	sub, err := authenticate(tok)
	if err != nil {
		// The verifier's reason stays on the server (Authenticate may log
		// it): a caller learns only that the token was refused.
		WriteError(w, Errorf(http.StatusUnauthorized, CodeUnauthorized, "invalid token"))
		return "", false
	}
	return sub, true
}

// RequireAuth wraps h so that it runs only for requests with a valid token.
func RequireAuth(authenticate Authenticate, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sub, ok := Authorize(w, r, authenticate, false)
		if !ok {
			return
		}
		h(w, r.WithContext(WithSubject(r.Context(), sub)))
	}
}
