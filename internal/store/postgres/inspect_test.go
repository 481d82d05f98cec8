package postgres_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/go-routing-service/routingservice/internal/store/postgres"
)

// Inspect reads the schema's state in every stage (absent, empty,
// migrated, newer than this program) and creates nothing.
func TestInspect(t *testing.T) {
	url := databaseURL(t)
	schema := freshSchema(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	opts := postgres.Options{Schema: schema, Logger: slog.New(slog.DiscardHandler)}
	ident := pgx.Identifier{schema}.Sanitize()

	st, err := postgres.Inspect(ctx, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	if st.ServerVersion == "" || st.SchemaExists || st.Migrated || st.Version != 0 || st.Latest < 1 {
		t.Fatalf("absent schema: %+v", st)
	}
	var av string
	if err := conn.QueryRow(ctx, "SHOW autovacuum").Scan(&av); err != nil {
		t.Fatal(err)
	}
	if st.Autovacuum != (av == "on") {
		t.Fatalf("Autovacuum = %v, the server says %q", st.Autovacuum, av)
	}
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema).Scan(&exists); err != nil || exists {
		t.Fatalf("schema exists after Inspect: %v %v", exists, err)
	}

	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+ident); err != nil {
		t.Fatal(err)
	}
	if st, err = postgres.Inspect(ctx, url, opts); err != nil || !st.SchemaExists || st.Migrated {
		t.Fatalf("empty schema: %+v, %v", st, err)
	}

	s, err := postgres.Open(ctx, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if st, err = postgres.Inspect(ctx, url, opts); err != nil || !st.Migrated || st.Version != st.Latest {
		t.Fatalf("migrated schema: %+v, %v", st, err)
	}

	if _, err := conn.Exec(ctx, "INSERT INTO "+ident+".schema_version (version, name) VALUES (9999, 'from the future')"); err != nil {
		t.Fatal(err)
	}
	if _, err = postgres.Inspect(ctx, url, opts); err == nil || !strings.Contains(err.Error(), "newer than this program") {
		t.Fatalf("a schema newer than the program: %v", err)
	}
}
