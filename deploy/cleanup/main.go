// Command cleanup lists, or deletes, what a test or benchmark run left in
// the shared engines: JetStream streams, PostgreSQL schemas and Redis
// keys.
//
//	go run ./deploy/cleanup [-nats URL] [-postgres URL] [-redis ADDR] [-prefix P] [-delete] [-baseline FILE] [-save FILE]
//
// Without -delete it prints one line per object ("stream NAME", "schema
// NAME", "key NAME") whose name starts with -prefix (every object when
// empty), and exits 1 if it printed any that -baseline does not list.
// -save writes the objects found to a file, for a later -baseline: a CI
// run saves what the engines held before the tests and fails on anything
// the tests added. With -delete it deletes the objects with -prefix
// (required) instead. An engine whose flag is empty is skipped.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "cleanup:", err)
		os.Exit(1)
	}
}

// builtinSchemas are PostgreSQL's own schemas and the default one, which
// no run creates.
var builtinSchemas = []string{"public", "information_schema"}

func run(args []string) error {
	fs := flag.NewFlagSet("cleanup", flag.ContinueOnError)
	natsURL := fs.String("nats", "", "NATS URL (JetStream streams)")
	pgURL := fs.String("postgres", "", "PostgreSQL URL (schemas)")
	redisAddr := fs.String("redis", "", "Redis address (keys)")
	prefix := fs.String("prefix", "", "only objects whose name starts with this")
	del := fs.Bool("delete", false, "delete the objects with -prefix")
	baseline := fs.String("baseline", "", "a file from -save: objects listed there are not reported")
	save := fs.String("save", "", "write the objects found to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *del && *prefix == "" {
		return errors.New("-delete needs -prefix")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var found []string
	if *natsURL != "" {
		got, err := streams(ctx, *natsURL, *prefix, *del)
		if err != nil {
			return err
		}
		found = append(found, got...)
	}
	if *pgURL != "" {
		got, err := schemas(ctx, *pgURL, *prefix, *del)
		if err != nil {
			return err
		}
		found = append(found, got...)
	}
	if *redisAddr != "" {
		got, err := keys(ctx, *redisAddr, *prefix, *del)
		if err != nil {
			return err
		}
		found = append(found, got...)
	}
	if *save != "" {
		if err := os.WriteFile(*save, []byte(strings.Join(found, "\n")+"\n"), 0o644); err != nil {
			return err
		}
	}
	if *del {
		for _, f := range found {
			fmt.Println("deleted", f)
		}
		return nil
	}
	known := map[string]bool{}
	if *baseline != "" {
		f, err := os.Open(*baseline)
		if err != nil {
			return err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			known[sc.Text()] = true
		}
		f.Close()
	}
	var left []string
	for _, f := range found {
		if !known[f] {
			left = append(left, f)
		}
	}
	for _, f := range left {
		fmt.Println(f)
	}
	if len(left) > 0 && *save == "" {
		return fmt.Errorf("%d objects left behind", len(left))
	}
	return nil
}

func streams(ctx context.Context, url, prefix string, del bool) ([]string, error) {
	nc, err := nats.Connect(url, nats.Name("cleanup"))
	if err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	var out []string
	names := js.StreamNames(ctx)
	for n := range names.Name() {
		if !strings.HasPrefix(n, prefix) {
			continue
		}
		if del {
			if err := js.DeleteStream(ctx, n); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				return out, fmt.Errorf("delete stream %s: %w", n, err)
			}
		}
		out = append(out, "stream "+n)
	}
	if err := names.Err(); err != nil {
		return out, fmt.Errorf("nats streams: %w", err)
	}
	slices.Sort(out)
	return out, nil
}

func schemas(ctx context.Context, url, prefix string, del bool) ([]string, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT nspname FROM pg_namespace
WHERE nspname NOT LIKE 'pg\_%' AND NOT (nspname = ANY($1)) AND starts_with(nspname, $2) ORDER BY nspname`, builtinSchemas, prefix)
	if err != nil {
		return nil, err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	var out []string
	for _, n := range names {
		if del {
			if _, err := conn.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{n}.Sanitize()+" CASCADE"); err != nil {
				return out, fmt.Errorf("drop schema %s: %w", n, err)
			}
		}
		out = append(out, "schema "+n)
	}
	return out, nil
}

func keys(ctx context.Context, addr, prefix string, del bool) ([]string, error) {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	var out []string
	it := rdb.Scan(ctx, 0, escapeGlob(prefix)+"*", 1000).Iterator()
	for it.Next(ctx) {
		k := it.Val()
		if del {
			if err := rdb.Del(ctx, k).Err(); err != nil {
				return out, fmt.Errorf("redis del %s: %w", k, err)
			}
		}
		out = append(out, "key "+k)
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("redis scan: %w", err)
	}
	slices.Sort(out)
	return out, nil
}

// escapeGlob quotes the characters Redis' SCAN MATCH treats as pattern.
func escapeGlob(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
