package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/store/postgres"
	"github.com/go-routing-service/routingservice/internal/store/sqlite"
)

// engine opens a fresh store of one engine for a test.
type engine struct {
	name string
	// open returns a new store, closed and removed when the test ends.
	open func(t *testing.T) *openStore
}

// openStore is a store and where it keeps its data.
type openStore struct {
	store.Store
	// path is the SQLite file ("" for PostgreSQL).
	path string
	// url and schema name the PostgreSQL schema ("" for SQLite).
	url, schema string
}

// openSQLite opens a store in a new SQLite file.
func openSQLite(t *testing.T) *openStore {
	t.Helper()
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := sqlite.Open(t.Context(), path, sqlite.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &openStore{Store: s, path: path}
}

// engines are SQLite, and PostgreSQL when ROUTING_TEST_POSTGRES_URL names a
// server (a test run on SQLite only says so).
func engines(t *testing.T) []engine {
	t.Helper()
	out := []engine{{name: "sqlite", open: openSQLite}}
	url := os.Getenv("ROUTING_TEST_POSTGRES_URL")
	if url == "" {
		t.Log("ROUTING_TEST_POSTGRES_URL is not set: PostgreSQL left out")
		return out
	}
	return append(out, engine{name: "postgres", open: func(t *testing.T) *openStore {
		b := make([]byte, 8)
		rand.Read(b)
		schema := "apitest_" + hex.EncodeToString(b)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			conn, err := pgx.Connect(ctx, url)
			if err != nil {
				t.Errorf("drop schema %s: connect: %v", schema, err)
				return
			}
			defer conn.Close(ctx)
			if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
				t.Errorf("drop schema %s: %v", schema, err)
			}
		})
		s, err := postgres.Open(t.Context(), url, postgres.Options{Schema: schema, MaxConns: 4, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return &openStore{Store: s, url: url, schema: schema}
	}})
}
