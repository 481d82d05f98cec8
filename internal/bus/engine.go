package bus

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// Engine is one message engine the bus runs on, chosen by bus.type. Its
// package provides it with its own section of the configuration;
// internal/config lists the engines, and everything the service does with
// one (check its keys, check the files they name, open its driver,
// inspect it for `config check --connect`, its upkeep) goes through this
// interface, so that adding an engine touches its own package and the
// list.
type Engine interface {
	// Shared reports whether instances on several machines can share the
	// engine. One that cannot (in process) is refused in production
	// unless single_node is set.
	Shared() bool
	// Check reports the problems of the keys the engine needs when it is
	// chosen, keys relative to bus ("nats.url", "ack_deadline"; an
	// environment variable by its name, in capitals). With env.Links
	// (production without insecure_links) it also refuses links that
	// could be read or spoofed on the network, or reached without
	// credentials.
	Check(c Config, env Env, bad func(key, msg string))
	// Preflight reports the files the engine's keys name that cannot be
	// read or do not hold what they should, keys relative to bus. It reads
	// them and nothing else.
	Preflight(bad func(key string, err error))
	// Open opens the engine's driver; closeEngine releases what Open
	// opened beside it (a connection, a server in the process), after
	// the driver is closed.
	Open(ctx context.Context, c Config, env Env) (d driver.Driver, closeEngine func() error, err error)
	// Inspect reaches the engine with the settings Open uses and says what
	// it found and what Open would create or update, changing nothing.
	Inspect(ctx context.Context, c Config, env Env) (string, error)
	// Maintain runs, until ctx is done, the upkeep the engine needs from
	// the pipeline role (Pub/Sub: removing the delivery topics of
	// instances gone, asking present which are); it returns at once where
	// there is none.
	Maintain(ctx context.Context, c Config, env Env, present InstancePresence)
	// System names the engine in spans (messaging.system).
	System() string
	// PacksDeliveries is bus.pack_deliveries's default on the engine.
	PacksDeliveries() bool
	// Unused are the bus keys the engine ignores, relative to bus (a
	// section by its name: "pubsub"); config check lists them.
	Unused() []string
}

// InstancePresence says which realtime instances are present.
type InstancePresence interface {
	// Present reports, for each of instances, whether it is present.
	Present(ctx context.Context, instances []string) ([]bool, error)
}

// Env is what an engine gets from the rest of the instance's
// configuration.
type Env struct {
	// Instance is this instance's id (instance_id).
	Instance string
	// DataDir is where an engine in the process keeps its files.
	DataDir string
	// Prod is production mode; Links asks Check to check the links (see
	// Engine.Check).
	Prod, Links bool
	// Concurrency is the ingress consumer's handlers
	// (pipeline.concurrency).
	Concurrency int
	// PublishTimeout bounds a publish of the api role
	// (api.publish_timeout).
	PublishTimeout time.Duration
	// Timeout bounds Inspect's connection attempts.
	Timeout time.Duration
	Logger  *slog.Logger
}

// Resources are the engine resources of one kind (streams, topics) that
// Inspect looked for: those it found and those Open would create.
type Resources struct {
	Noun           string
	Found, Missing []string
}

// String says how many of them exist: "3 of 4 streams exist".
func (r Resources) String() string {
	have, want, noun := len(r.Found), len(r.Found)+len(r.Missing), r.Noun
	if want != 1 {
		noun += "s"
	}
	verb := "exist"
	if want == 1 {
		verb = "exists"
	}
	return fmt.Sprintf("%d of %d %s %s", have, want, noun, verb)
}
