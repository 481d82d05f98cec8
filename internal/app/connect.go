package app

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/internal/bus/gcppubsub"
	"github.com/go-routing-service/routingservice/internal/bus/natsbus"
	"github.com/go-routing-service/routingservice/internal/config"
	redispresence "github.com/go-routing-service/routingservice/internal/presence/redis"
	"github.com/go-routing-service/routingservice/internal/store/postgres"
	"github.com/go-routing-service/routingservice/internal/store/sqlite"
)

// BackendCheck is the outcome of reaching one backend.
type BackendCheck struct {
	// Backend is bus, store, presence or jwks.
	Backend string
	// Detail says what was found when Err is nil.
	Detail string
	Err    error
}

// CheckBackends reaches every backend the configuration's roles use, with
// the connection settings serve uses (the same option mapping: endpoints,
// TLS, credentials), and changes nothing: it creates, migrates, updates
// and writes nothing, and a stream, topic, subscription or schema that
// serve would create is reported, not made. Each check is bounded by
// timeout; they run at once. The results come in a fixed order: bus,
// store, presence, then jwks when auth.jwks_url is set and a role verifies
// tokens.
//
// Run Preflight first: CheckBackends assumes a configuration that passed
// config.Check and Preflight.
func CheckBackends(ctx context.Context, cfg config.Config, timeout time.Duration) []BackendCheck {
	log := slog.New(slog.DiscardHandler)
	type check struct {
		name string
		run  func(context.Context) (string, error)
	}
	checks := []check{
		{"bus", func(ctx context.Context) (string, error) { return checkBus(ctx, cfg, timeout, log) }},
		{"store", func(ctx context.Context) (string, error) { return checkStore(ctx, cfg, log) }},
		{"presence", func(ctx context.Context) (string, error) { return checkPresence(ctx, cfg) }},
	}
	// Every role opens the bus, the store and presence; the key set
	// serves the roles that verify tokens.
	if cfg.Auth.JWKSURL != "" && (cfg.Has(config.RoleAPI) || cfg.Has(config.RoleRealtime)) {
		checks = append(checks, check{"jwks", func(ctx context.Context) (string, error) { return checkJWKS(ctx, cfg) }})
	}
	out := make([]BackendCheck, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			detail, err := c.run(cctx)
			if err != nil && errors.Is(cctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
				err = fmt.Errorf("%w (no answer within the %v timeout)", err, timeout)
			}
			out[i] = BackendCheck{Backend: c.name, Detail: detail, Err: err}
		}()
	}
	wg.Wait()
	return out
}

func checkBus(ctx context.Context, cfg config.Config, timeout time.Duration, log *slog.Logger) (string, error) {
	switch cfg.Bus.Type {
	case "embedded":
		// The server makes its storage directory in the data dir.
		dir := filepath.Join(cfg.DataDir, "nats")
		how := "directory " + dir + " writable"
		if err := sqlite.WritableDir(dir); errors.Is(err, fs.ErrNotExist) {
			how, err = creatableDir(cfg.DataDir, cfg.DataDir)
			if err != nil {
				return "", fmt.Errorf("embedded NATS storage %s: %w", dir, err)
			}
		} else if err != nil {
			return "", fmt.Errorf("embedded NATS storage: %w", err)
		}
		return fmt.Sprintf("embedded NATS JetStream, nothing to reach: it starts with the service (storage in %s; %s)", dir, how), nil
	case "nats":
		conn, err := natsbus.Connect(cfg.Bus.NATS.URL, cfg.Bus.NATS.CredentialsFile, nats.Timeout(timeout), nats.NoReconnect())
		if err != nil {
			return "", fmt.Errorf("nats (config key bus.nats.url): %w", err)
		}
		defer conn.Close()
		topo, err := natsbus.Inspect(ctx, conn, natsConfig(cfg, log))
		if err != nil {
			return "", fmt.Errorf("nats %s: %w", conn.ConnectedUrlRedacted(), natsKey(err))
		}
		var b strings.Builder
		fmt.Fprintf(&b, "nats %s (server %s), JetStream reachable (the account holds %d streams); %s", conn.ConnectedUrlRedacted(),
			conn.ConnectedServerVersion(), topo.Account.Streams,
			present(len(topo.Streams), len(topo.Streams)+len(topo.MissingStreams), "stream"))
		fmt.Fprintf(&b, ", %s", present(len(topo.Consumers), len(topo.Consumers)+len(topo.MissingConsumers), "consumer"))
		if missing := slices.Concat(topo.MissingStreams, topo.MissingConsumers); len(missing) > 0 {
			fmt.Fprintf(&b, "; serve creates %s", strings.Join(missing, ", "))
		}
		return b.String(), nil
	case "pubsub":
		pc, opts := pubsubConfig(cfg, log)
		topo, err := gcppubsub.Inspect(ctx, pc, opts...)
		where := "project " + pc.ProjectID
		if e := cfg.Bus.PubSub.Endpoint; e != "" {
			where += " at " + e
		} else if e := os.Getenv("PUBSUB_EMULATOR_HOST"); e != "" {
			where += " at the emulator " + e
		}
		if err != nil {
			return "", fmt.Errorf("pubsub %s: %w", where, err)
		}
		var b strings.Builder
		fmt.Fprintf(&b, "pubsub %s; %s, %s", where,
			present(len(topo.Topics), len(topo.Topics)+len(topo.MissingTopics), "topic"),
			present(len(topo.Subscriptions), len(topo.Subscriptions)+len(topo.MissingSubscriptions), "subscription"))
		if missing := slices.Concat(topo.MissingTopics, topo.MissingSubscriptions); len(missing) > 0 {
			fmt.Fprintf(&b, "; serve creates %s", strings.Join(shortNames(missing), ", "))
		}
		if len(topo.Outdated) > 0 {
			fmt.Fprintf(&b, "; serve updates %s", strings.Join(shortNames(topo.Outdated), ", "))
		}
		return b.String(), nil
	}
	return "", fmt.Errorf("config key bus.type: unknown %q", cfg.Bus.Type)
}

func checkStore(ctx context.Context, cfg config.Config, log *slog.Logger) (string, error) {
	switch cfg.Store.Type {
	case "postgres":
		st, err := postgres.Inspect(ctx, cfg.DatabaseURL, postgresOptions(cfg, log))
		if err != nil {
			return "", fmt.Errorf("postgres (DATABASE_URL): %w", err)
		}
		d := fmt.Sprintf("postgres %s, schema %s ", st.ServerVersion, st.Schema)
		switch {
		case !st.SchemaExists:
			d += fmt.Sprintf("does not exist; serve creates it and applies migrations 1-%d", st.Latest)
		case !st.Migrated:
			d += fmt.Sprintf("has no schema_version table; serve applies migrations 1-%d", st.Latest)
		case st.Version < st.Latest:
			d += fmt.Sprintf("at migration %d of %d; serve applies %d-%d", st.Version, st.Latest, st.Version+1, st.Latest)
		default:
			d += fmt.Sprintf("at migration %d of %d", st.Version, st.Latest)
		}
		if !st.Autovacuum {
			d += "; warning: autovacuum is off, the store's tables grow without bound and writes slow down"
		}
		return d, nil
	case "sqlite":
		path := cfg.Store.SQLitePath
		st, err := sqlite.CheckPath(path)
		if err == nil {
			if st.Exists {
				return fmt.Sprintf("sqlite %s (%d bytes), readable and writable", path, st.Size), nil
			}
			return fmt.Sprintf("sqlite %s does not exist yet; serve creates it (directory %s writable)", path, st.Dir), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		how, derr := creatableDir(st.Dir, cfg.DataDir)
		if derr != nil {
			return "", fmt.Errorf("sqlite %s: %w", path, derr)
		}
		return fmt.Sprintf("sqlite %s does not exist yet; serve creates it (data dir %s)", path, how), nil
	}
	return "", fmt.Errorf("config key store.type: unknown %q", cfg.Store.Type)
}

func checkPresence(ctx context.Context, cfg config.Config) (string, error) {
	switch cfg.Presence.Type {
	case "memory":
		return "in process (memory), nothing to reach", nil
	case "redis":
		o := redisOptions(cfg)
		version, err := redispresence.Check(ctx, o)
		if err != nil && o.TLS && errors.Is(err, context.DeadlineExceeded) {
			// A server without TLS never answers the TLS handshake.
			return "", fmt.Errorf("redis (config key presence.redis.addr; presence.redis.tls is true: does the server speak TLS?): %w", err)
		}
		if err != nil {
			return "", fmt.Errorf("redis (config key presence.redis.addr): %w", err)
		}
		d := "redis " + o.Addr
		var attrs []string
		if version != "" {
			attrs = append(attrs, "Redis "+version)
		}
		attrs = append(attrs, fmt.Sprintf("db %d", o.DB))
		if o.TLS {
			attrs = append(attrs, "TLS")
		}
		if o.Password != "" {
			attrs = append(attrs, "with REDIS_PASSWORD")
		}
		return d + " (" + strings.Join(attrs, ", ") + "): PING answered", nil
	}
	return "", fmt.Errorf("config key presence.type: unknown %q", cfg.Presence.Type)
}

func checkJWKS(ctx context.Context, cfg config.Config) (string, error) {
	where := cfg.Auth.JWKSURL
	if u, err := url.Parse(where); err == nil {
		where = u.Redacted()
	}
	ks, err := auth.FetchKeySet(ctx, authOptions(cfg))
	if err != nil {
		return "", fmt.Errorf("%s (config key auth.jwks_url): %w", where, err)
	}
	var counts, usable []string
	for _, alg := range slices.Sorted(maps.Keys(ks.Keys)) {
		counts = append(counts, fmt.Sprintf("%s: %d", alg, ks.Keys[alg]))
		if slices.Contains(cfg.Auth.Algorithms, alg) {
			usable = append(usable, alg)
		}
	}
	d := fmt.Sprintf("%s: %d usable key", where, ks.Usable())
	if ks.Usable() != 1 {
		d += "s"
	}
	if len(counts) > 0 {
		d += " (" + strings.Join(counts, ", ") + ")"
	}
	if len(ks.Skipped) > 0 {
		d += fmt.Sprintf("; %d skipped: %s", len(ks.Skipped), strings.Join(ks.Skipped, "; "))
	}
	var want []string
	for _, a := range cfg.Auth.Algorithms {
		if a != auth.HS256 {
			want = append(want, a)
		}
	}
	if len(want) > 0 && len(usable) == 0 {
		return "", fmt.Errorf("%s: no key for %s (config key auth.algorithms), so every such token would be refused", d, strings.Join(want, ", "))
	}
	return d, nil
}

// creatableDir reports how dir comes to be writable: it exists and is, or
// it is the data dir, which serve creates with its parents, and its
// nearest existing parent is. It creates nothing.
func creatableDir(dir, dataDir string) (string, error) {
	err := sqlite.WritableDir(dir)
	if err == nil {
		return "directory " + dir + " writable", nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	if filepath.Clean(dir) != filepath.Clean(dataDir) {
		return "", fmt.Errorf("directory %s does not exist, and serve creates only the data dir (%s)", dir, dataDir)
	}
	for parent := filepath.Dir(filepath.Clean(dir)); ; parent = filepath.Dir(parent) {
		err := sqlite.WritableDir(parent)
		if err == nil {
			return fmt.Sprintf("%s is created in %s, writable", dir, parent), nil
		}
		if !errors.Is(err, fs.ErrNotExist) || parent == filepath.Dir(parent) {
			return "", fmt.Errorf("cannot create %s: %w", dir, err)
		}
	}
}

// present says how many of want things exist: "4 of 4 streams exist".
func present(have, want int, noun string) string {
	if want != 1 {
		noun += "s"
	}
	verb := "exist"
	if want == 1 {
		verb = "exists"
	}
	return fmt.Sprintf("%d of %d %s %s", have, want, noun, verb)
}

// shortNames drops "projects/<p>/topics/" and the like from resource names.
func shortNames(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		parts := strings.SplitN(n, "/", 4)
		if len(parts) == 4 && parts[0] == "projects" {
			n = strings.TrimSuffix(parts[2], "s") + " " + parts[3]
		}
		out[i] = n
	}
	return out
}
