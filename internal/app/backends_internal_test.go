package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	neturl "net/url"
	"os"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/store/postgres"
)

// closedPort is a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

// A store that does not answer is waited for; one that answers and
// refuses (a database that does not exist) fails the start.
func TestUnreachableTellsDownFromRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := postgres.Open(ctx, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/x?sslmode=disable", closedPort(t)), postgres.Options{})
	if err == nil || !unreachable(err) {
		t.Errorf("PostgreSQL on a closed port: %v: unreachable = false, want true", err)
	}
	if unreachable(errors.New("password authentication failed")) {
		t.Error("an error that is not the network's counts as unreachable")
	}
	url := os.Getenv("ROUTING_TEST_POSTGRES_URL")
	if url == "" {
		t.Skip("set ROUTING_TEST_POSTGRES_URL for the case of a server that answers and refuses")
	}
	u, err := pgURLWithDatabase(url, "routing_no_such_database")
	if err != nil {
		t.Fatal(err)
	}
	_, err = postgres.Open(ctx, u, postgres.Options{})
	if err == nil || unreachable(err) {
		t.Errorf("a database that does not exist: %v: unreachable = %v, want an error that is not", err, err != nil && unreachable(err))
	}
}

// pgURLWithDatabase is url with its database replaced by db.
func pgURLWithDatabase(raw, db string) (string, error) {
	u, err := neturl.Parse(raw)
	if err != nil {
		return "", err
	}
	u.Path = "/" + db
	return u.String(), nil
}
