package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/store"
)

// testLeaseHeldAlone: a Store alone on its data takes a lease, keeps it
// on every later HoldLease, and takes it again after releasing it;
// releasing one it does not hold is harmless.
func testLeaseHeldAlone(t *testing.T, s store.Store) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.ReleaseLease(ctx, "never-held"); err != nil {
		t.Fatalf("ReleaseLease of a lease never held: %v", err)
	}
	for i := range 3 {
		held, err := s.HoldLease(ctx, "sweep")
		if err != nil || !held {
			t.Fatalf("HoldLease #%d = %v, %v; want true", i+1, held, err)
		}
	}
	if err := s.ReleaseLease(ctx, "sweep"); err != nil {
		t.Fatalf("ReleaseLease: %v", err)
	}
	if held, err := s.HoldLease(ctx, "sweep"); err != nil || !held {
		t.Fatalf("HoldLease after release = %v, %v; want true", held, err)
	}
	if held, err := s.HoldLease(ctx, "other"); err != nil || !held {
		t.Fatalf("HoldLease of a second lease = %v, %v; want true", held, err)
	}
	if err := s.ReleaseLease(ctx, "sweep"); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseLease(ctx, "other"); err != nil {
		t.Fatal(err)
	}
}

// RunSharedLeaseTests checks leases among Stores on the same data (a
// store whose data several processes share): open opens one more Store
// on that data, closed by the test. One holds a lease at a time; leases
// of other names are apart; a lease released, or whose holder closed, is
// taken by the next HoldLease of another.
func RunSharedLeaseTests(t *testing.T, open func(t *testing.T) store.Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, b, c := open(t), open(t), open(t)
	hold := func(s store.Store, name string) bool {
		t.Helper()
		held, err := s.HoldLease(ctx, name)
		if err != nil {
			t.Fatalf("HoldLease(%s): %v", name, err)
		}
		return held
	}
	if !hold(a, "sweep") {
		t.Fatal("the first Store did not get a free lease")
	}
	for i := range 2 {
		if hold(b, "sweep") || hold(c, "sweep") {
			t.Fatalf("round %d: a second Store got a lease another holds", i+1)
		}
		if !hold(a, "sweep") {
			t.Fatalf("round %d: the holder lost its lease", i+1)
		}
	}
	if !hold(b, "other") {
		t.Fatal("a lease of another name was not free")
	}
	if err := a.ReleaseLease(ctx, "sweep"); err != nil {
		t.Fatal(err)
	}
	if !hold(c, "sweep") {
		t.Fatal("a released lease was not taken by another Store")
	}
	if hold(a, "sweep") || hold(b, "sweep") {
		t.Fatal("two Stores hold the lease after its release")
	}
	// The holder goes away without releasing it.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !hold(a, "sweep") {
		if time.Now().After(deadline) {
			t.Fatal("the lease of a closed Store was never taken over")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if hold(b, "sweep") {
		t.Fatal("two Stores hold the lease after its holder closed")
	}
	if err := a.ReleaseLease(ctx, "sweep"); err != nil {
		t.Fatal(err)
	}
	if err := b.ReleaseLease(ctx, "other"); err != nil {
		t.Fatal(err)
	}
}
