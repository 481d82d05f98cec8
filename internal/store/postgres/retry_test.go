package postgres

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// A group commit the server aborts to break a deadlock or a serialization
// conflict is run again, up to writeAttempts in all; any other outcome is
// returned at once.
func TestRetryAborted(t *testing.T) {
	deadlock := fmt.Errorf("write: %w", &pgconn.PgError{Code: deadlockDetected})
	conflict := &pgconn.PgError{Code: serializationFailure}
	other := &pgconn.PgError{Code: "23505"}
	reset := errors.New("connection reset")
	for _, tc := range []struct {
		name  string
		errs  []error // the outcome of each run
		runs  int
		final error
	}{
		{"success", []error{nil}, 1, nil},
		{"deadlock then success", []error{deadlock, nil}, 2, nil},
		{"conflict, deadlock, success", []error{conflict, deadlock, nil}, 3, nil},
		{"deadlocks every time", []error{deadlock, deadlock, deadlock, nil}, writeAttempts, deadlock},
		{"another server error", []error{other, nil}, 1, other},
		{"not a server error", []error{reset, nil}, 1, reset},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runs := 0
			err := retryAborted(func() error {
				runs++
				return tc.errs[runs-1]
			})
			if runs != tc.runs {
				t.Errorf("ran %d times, want %d", runs, tc.runs)
			}
			if !errors.Is(err, tc.final) {
				t.Errorf("error %v, want %v", err, tc.final)
			}
		})
	}
}
