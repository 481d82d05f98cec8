package auth

import (
	"errors"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/go-routing-service/routingservice/internal/envelope"
)

// OtherSecretMsg is logged (at info, at most once per otherSecretEvery,
// with OtherSecretHint as its hint) when a token is refused only because
// its HS256 signature does not match this service's secret: the usual
// cause of a 401 for a token that looks right.
const (
	OtherSecretMsg  = "a token signed with another HS256 secret was refused (401)"
	OtherSecretHint = "the token is well-formed and unexpired, but its signature does not match this service's secret: " +
		"it was made with another JWT_SECRET, or by `routingservice token` against another data dir (each data dir " +
		"generates its own jwt_secret when JWT_SECRET is unset); see docs/troubleshooting.md"
)

// otherSecretEvery bounds how often OtherSecretHint is logged.
const otherSecretEvery = time.Minute

// hintLimiter lets one log line through per period and counts the rest.
type hintLimiter struct {
	mu         sync.Mutex
	next       time.Time
	suppressed int
}

// allow reports whether a line may be logged at now, and how many were
// held back since the last one.
func (h *hintLimiter) allow(now time.Time, every time.Duration) (bool, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if now.Before(h.next) {
		h.suppressed++
		return false, 0
	}
	n := h.suppressed
	h.suppressed = 0
	h.next = now.Add(every)
	return true, n
}

// hintOtherSecret logs OtherSecretMsg, rate-limited, when t failed only
// on its HS256 signature: the algorithm is HS256 and configured, the
// signature does not verify, and the claims read without it are those of
// a token this service would take (an exp still ahead, a valid sub). It
// costs nothing on the paths that succeed, and only a comparison on the
// other failures.
func (v *Verifier) hintOtherSecret(t *jwt.Token, rc *jwt.RegisteredClaims, err error, now time.Time) {
	if t == nil || t.Method == nil || t.Method.Alg() != HS256 || v.hsKey == nil ||
		!errors.Is(err, jwt.ErrSignatureInvalid) {
		return
	}
	if rc.ExpiresAt == nil || !now.Before(rc.ExpiresAt.Add(v.leeway)) || envelope.ValidateURN(rc.Subject) != nil {
		return
	}
	ok, held := v.otherSecret.allow(now, otherSecretEvery)
	if !ok {
		return
	}
	v.log.Info(OtherSecretMsg, "hint", OtherSecretHint, "held_back", held)
}
