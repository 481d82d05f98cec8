package push

import (
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-routing-service/routingservice/internal/store"
)

// maxBreakerHosts bounds the hosts a breaker tracks (Web Push hosts are
// chosen by users); past it, the oldest knowledge is dropped.
const maxBreakerHosts = 10000

// breaker is a circuit breaker per host: after failures consecutive
// failures a host's circuit is open for cooldown; then one send probes it.
// Safe for concurrent use.
type breaker struct {
	failures int
	cooldown time.Duration

	mu    sync.Mutex
	hosts map[string]*hostState // only hosts with failures
}

type hostState struct {
	failures  int
	openUntil time.Time // zero: closed
}

func newBreaker(failures int, cooldown time.Duration) *breaker {
	return &breaker{failures: failures, cooldown: cooldown, hosts: make(map[string]*hostState)}
}

// allow reports whether a send to host may go now. When the cooldown of an
// open circuit is over it lets one send through (the probe) and keeps the
// circuit open for another cooldown, unless record closes it.
func (b *breaker) allow(host string, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.hosts[host]
	if h == nil || h.openUntil.IsZero() {
		return true
	}
	if now.Before(h.openUntil) {
		return false
	}
	h.openUntil = now.Add(b.cooldown) // this send is the probe
	return true
}

// record notes the outcome of a send to host.
func (b *breaker) record(host string, ok bool, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ok {
		delete(b.hosts, host)
		return
	}
	h := b.hosts[host]
	if h == nil {
		if len(b.hosts) >= maxBreakerHosts {
			clear(b.hosts)
		}
		h = &hostState{}
		b.hosts[host] = h
	}
	h.failures++
	if h.failures >= b.failures && (h.openUntil.IsZero() || !now.Before(h.openUntil)) {
		h.openUntil = now.Add(b.cooldown)
	}
}

// targetHost names the host a push to t goes to: a Web Push endpoint's
// host, or the provider for the others.
func targetHost(t store.Target) string {
	switch t.Platform {
	case "webpush":
		if u, err := url.Parse(t.Token); err == nil && u.Host != "" {
			return strings.ToLower(u.Host)
		}
		return "webpush"
	case "android", "ios":
		return "fcm"
	default:
		return t.Platform
	}
}
