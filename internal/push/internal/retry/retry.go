// Package retry is the bounded retry loop the push providers share: it
// waits with exponential backoff between attempts, honours a provider's
// Retry-After, and gives up after a fixed number of retries.
package retry

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// Defaults of a Policy's zero fields.
const (
	DefaultMinDelay = 500 * time.Millisecond
	DefaultMaxDelay = 30 * time.Second
)

// Policy bounds the retries of one send.
type Policy struct {
	// MaxRetries is the number of attempts after the first (0: none).
	MaxRetries int
	// MinDelay is the first backoff delay; it doubles with each retry.
	MinDelay time.Duration
	// MaxDelay caps the backoff; a Retry-After longer than MaxDelay ends
	// the retries (the provider asked for more patience than we have).
	MaxDelay time.Duration
	// Wait blocks for d or until ctx is done. Nil: a real timer.
	Wait func(ctx context.Context, d time.Duration) error
}

// Temporary marks an attempt's error as worth retrying, with the wait the
// provider asked for (0: none given).
type Temporary struct {
	Err        error
	RetryAfter time.Duration
}

func (e *Temporary) Error() string { return e.Err.Error() }
func (e *Temporary) Unwrap() error { return e.Err }

// Do runs attempt until it succeeds, fails with an error that has no
// *Temporary in its chain (errors.As), or the retries are spent. It returns
// the last error, with a *Temporary at its top unwrapped; a wrapped one
// stays in the chain under the context the wrapper added.
func (p Policy) Do(ctx context.Context, attempt func(ctx context.Context) error) error {
	minDelay, maxDelay := p.MinDelay, p.MaxDelay
	if minDelay <= 0 {
		minDelay = DefaultMinDelay
	}
	if maxDelay <= 0 {
		maxDelay = DefaultMaxDelay
	}
	wait := p.Wait
	if wait == nil {
		wait = sleep
	}
	backoff := minDelay
	for n := 0; ; n++ {
		err := attempt(ctx)
		var tmp *Temporary
		if !errors.As(err, &tmp) {
			return err
		}
		cause := err
		if err == error(tmp) {
			cause = tmp.Err
		}
		if n >= p.MaxRetries {
			return fmt.Errorf("%w (gave up after %d attempts)", cause, n+1)
		}
		d := backoff
		if tmp.RetryAfter > 0 {
			if tmp.RetryAfter > maxDelay {
				return fmt.Errorf("%w (retry-after %s exceeds the %s limit)", cause, tmp.RetryAfter, maxDelay)
			}
			d = tmp.RetryAfter
		} else {
			// Full jitter on the upper half keeps retries of many senders apart.
			d = d/2 + rand.N(d/2+1)
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
			return fmt.Errorf("%w (no time left to retry in %s)", cause, d)
		}
		if err := wait(ctx, d); err != nil {
			return fmt.Errorf("%w (retry wait: %w)", cause, err)
		}
		backoff = min(backoff*2, maxDelay)
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RetryAfter parses a Retry-After header (seconds or an HTTP date); 0 when
// absent or unparseable.
func RetryAfter(h http.Header, now time.Time) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		if s < 0 {
			return 0
		}
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}
