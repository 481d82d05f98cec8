package postgres_test

import (
	"log/slog"
	"testing"

	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/store/postgres"
	"github.com/go-routing-service/routingservice/internal/store/storetest"
)

// TestSharedLease runs the lease suite on three Stores of one schema.
func TestSharedLease(t *testing.T) {
	url := databaseURL(t)
	schema := freshSchema(t, url)
	storetest.RunSharedLeaseTests(t, func(t *testing.T) store.Store {
		s, err := postgres.Open(t.Context(), url, postgres.Options{Schema: schema, MaxConns: 4, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}
