// Package pushtest runs local stand-ins for the push providers (FCM HTTP v1
// with its OAuth2 token endpoint, APNs over HTTP/2, a Web Push service),
// each an httptest server that checks what it receives against the
// provider's documented protocol, records it, and answers with scripted
// statuses. A protocol violation fails the test that owns the stand-in.
//
// Typical use:
//
//	f := pushtest.NewFCM(t)
//	sender, err := fcm.New(f.Config())
//	... push to a target ...
//	got := f.WaitDelivered(t, 1)
package pushtest

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// Reply is a scripted answer of a stand-in to one request for a target.
type Reply struct {
	// Status is the HTTP status.
	Status int
	// Reason is the provider's error code: an FCM errorCode (UNREGISTERED,
	// INVALID_ARGUMENT, QUOTA_EXCEEDED, UNAVAILABLE, INTERNAL, ...), an
	// APNs reason (Unregistered, BadDeviceToken, TooManyRequests, ...);
	// ignored by the Web Push stand-in.
	Reason string
	// RetryAfter, when set, is sent as the Retry-After header.
	RetryAfter string
}

// WaitTimeout bounds the Wait methods of the stand-ins.
var WaitTimeout = 10 * time.Second

// recorder keeps what a stand-in received and its scripted replies.
type recorder[T any] struct {
	mu        sync.Mutex
	all       []T
	delivered []T
	scripts   map[string][]Reply
}

// script queues replies for key (a token or an endpoint).
func (r *recorder[T]) script(key string, replies []Reply) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.scripts == nil {
		r.scripts = make(map[string][]Reply)
	}
	r.scripts[key] = append(r.scripts[key], replies...)
}

// next pops the next scripted reply for key; ok is false when none is left
// (the request is then delivered).
func (r *recorder[T]) next(key string) (Reply, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.scripts[key]
	if len(q) == 0 {
		return Reply{}, false
	}
	r.scripts[key] = q[1:]
	return q[0], true
}

func (r *recorder[T]) record(v T, delivered bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.all = append(r.all, v)
	if delivered {
		r.delivered = append(r.delivered, v)
	}
}

func (r *recorder[T]) requests() []T {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.all)
}

func (r *recorder[T]) deliveredCopy() []T {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.delivered)
}

// wait polls until at least n requests were delivered, and fails t after
// WaitTimeout.
func (r *recorder[T]) wait(t testing.TB, n int) []T {
	t.Helper()
	deadline := time.Now().Add(WaitTimeout)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		if got := r.deliveredCopy(); len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("pushtest: %d pushes delivered after %s, want %d", len(r.deliveredCopy()), WaitTimeout, n)
		}
		<-tick.C
	}
}
