package api

import (
	"math"
	"net/http"
	"time"

	"github.com/go-routing-service/routingservice/internal/web"
)

// Limiter is the per-user token bucket.
type Limiter = web.Limiter

// NewLimiter allows each user perSecond requests on average with bursts of
// burst. perSecond <= 0 returns nil: no limit.
func NewLimiter(perSecond float64, burst int) *Limiter { return web.NewLimiter(perSecond, burst) }

// limit wraps an authenticated handler with the caller's rate limit (429
// with Retry-After when it is spent).
func (s *Server) limit(h http.HandlerFunc) http.HandlerFunc {
	if s.limiter == nil {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if ok, wait := s.limiter.Allow(web.Subject(r.Context()), time.Now()); !ok {
			e := web.Errorf(http.StatusTooManyRequests, web.CodeRateLimited, "too many requests; retry after the Retry-After delay")
			e.RetryAfter = int(math.Ceil(wait.Seconds()))
			web.WriteError(w, e)
			return
		}
		h(w, r)
	}
}
