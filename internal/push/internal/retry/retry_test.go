package retry

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

var errProvider = errors.New("provider: 503")

func TestDo(t *testing.T) {
	cases := []struct {
		name string
		// errs are the attempts' errors, in order; attempts past the end succeed.
		errs       []error
		maxRetries int
		// wantAttempts and wantWaits are the attempts made and the waits
		// asked for (0: any backoff delay).
		wantAttempts int
		wantWaits    []time.Duration
		wantErr      error
	}{
		{
			name: "temporary is retried", errs: []error{&Temporary{Err: errProvider}},
			maxRetries: 2, wantAttempts: 2, wantWaits: []time.Duration{0},
		},
		{
			name:       "wrapped temporary is retried",
			errs:       []error{fmt.Errorf("send to device 7: %w", &Temporary{Err: errProvider})},
			maxRetries: 2, wantAttempts: 2, wantWaits: []time.Duration{0},
		},
		{
			name:       "wrapped temporary's retry-after is honoured",
			errs:       []error{fmt.Errorf("send: %w", &Temporary{Err: errProvider, RetryAfter: 3 * time.Second})},
			maxRetries: 2, wantAttempts: 2, wantWaits: []time.Duration{3 * time.Second},
		},
		{
			name:       "twice wrapped temporary is retried",
			errs:       []error{fmt.Errorf("a: %w", fmt.Errorf("b: %w", &Temporary{Err: errProvider, RetryAfter: time.Second}))},
			maxRetries: 1, wantAttempts: 2, wantWaits: []time.Duration{time.Second},
		},
		{
			name: "permanent is not retried", errs: []error{errProvider},
			maxRetries: 3, wantAttempts: 1, wantErr: errProvider,
		},
		{
			name:       "wrapped permanent is not retried",
			errs:       []error{fmt.Errorf("send: %w", errProvider)},
			maxRetries: 3, wantAttempts: 1, wantErr: errProvider,
		},
		{
			name: "retries run out",
			errs: []error{
				fmt.Errorf("send: %w", &Temporary{Err: errProvider}),
				fmt.Errorf("send: %w", &Temporary{Err: errProvider}),
			},
			maxRetries: 1, wantAttempts: 2, wantWaits: []time.Duration{0}, wantErr: errProvider,
		},
		{
			name:       "wrapped retry-after over the limit ends the retries",
			errs:       []error{fmt.Errorf("send: %w", &Temporary{Err: errProvider, RetryAfter: time.Hour})},
			maxRetries: 3, wantAttempts: 1, wantErr: errProvider,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var waits []time.Duration
			p := Policy{MaxRetries: tc.maxRetries, MinDelay: 10 * time.Millisecond, MaxDelay: time.Minute,
				Wait: func(_ context.Context, d time.Duration) error {
					waits = append(waits, d)
					return nil
				}}
			attempts := 0
			err := p.Do(context.Background(), func(context.Context) error {
				attempts++
				if attempts <= len(tc.errs) {
					return tc.errs[attempts-1]
				}
				return nil
			})
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("Do = %v, want %v", err, tc.wantErr)
			}
			if attempts != tc.wantAttempts {
				t.Fatalf("%d attempts, want %d", attempts, tc.wantAttempts)
			}
			if len(waits) != len(tc.wantWaits) {
				t.Fatalf("waits %v, want %v", waits, tc.wantWaits)
			}
			for i, want := range tc.wantWaits {
				if want != 0 && waits[i] != want {
					t.Fatalf("wait %d = %s, want %s", i, waits[i], want)
				}
				if want == 0 && (waits[i] <= 0 || waits[i] > p.MinDelay<<i) {
					t.Fatalf("wait %d = %s, want a backoff delay up to %s", i, waits[i], p.MinDelay<<i)
				}
			}
		})
	}
}
