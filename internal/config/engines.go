package config

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/bus/gcppubsub"
	"github.com/go-routing-service/routingservice/internal/bus/natsbus"
	"github.com/go-routing-service/routingservice/internal/presence"
	"github.com/go-routing-service/routingservice/internal/presence/memory"
	redispresence "github.com/go-routing-service/routingservice/internal/presence/redis"
	"github.com/go-routing-service/routingservice/internal/store"
	"github.com/go-routing-service/routingservice/internal/store/postgres"
	"github.com/go-routing-service/routingservice/internal/store/sqlite"
	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// The engines. Each port (bus, store, presence) has its keys here: the
// keys every engine shares, owned by the port's package, and each engine's
// own section, owned by the engine's package; and its list of engines,
// name (the value of <port>.type) to engine. An engine's package holds
// everything about it (its keys' defaults and checks, the files it reads,
// how it opens and how config check --connect reaches it); adding an
// engine is its package, its section below if it has keys, its defaults
// and its line in the list.
//
// This package imports the engines' packages: an engine never sees this
// package's Config (it gets its section and the port's keys), so there is
// no cycle, and the service's binary links every engine anyway.

// Bus is bus.*: the portable bus's keys and each engine's section.
type Bus struct {
	bus.Config `yaml:",inline"`
	NATS       natsbus.Settings   `yaml:"nats"`
	PubSub     gcppubsub.Settings `yaml:"pubsub"`
}

func defaultBus() Bus {
	return Bus{Config: bus.DefaultConfig(), NATS: natsbus.DefaultSettings(), PubSub: gcppubsub.DefaultSettings()}
}

// engines lists the bus engines.
func (b Bus) engines() []engine[bus.Engine] {
	return []engine[bus.Engine]{
		{"embedded", natsbus.Engine{Settings: b.NATS, Embedded: true}},
		{"nats", natsbus.Engine{Settings: b.NATS}},
		{"pubsub", gcppubsub.Engine{Settings: b.PubSub}},
	}
}

// Engine is the engine bus.type names; nil for a name no engine has
// (Check reports it).
func (b Bus) Engine() bus.Engine { return lookup(b.engines(), b.Type) }

// Packing reports whether delivery events are packed: pack_deliveries, or
// the engine's default when unset.
func (b Bus) Packing() bool {
	if b.PackDeliveries != nil {
		return *b.PackDeliveries
	}
	e := b.Engine()
	return e == nil || e.PacksDeliveries()
}

// Store is store.*: the keys every store shares and each engine's.
type Store struct {
	store.Config `yaml:",inline"`
	SQLite       sqlite.Settings   `yaml:",inline"`
	Postgres     postgres.Settings `yaml:",inline"`
}

func defaultStore() Store {
	return Store{Config: store.DefaultConfig(), Postgres: postgres.DefaultSettings()}
}

// storeEngines lists the store engines.
func (c Config) storeEngines() []engine[store.Engine] {
	return []engine[store.Engine]{
		{"sqlite", sqlite.Engine{Settings: c.Store.SQLite}},
		{"postgres", postgres.Engine{Settings: c.Store.Postgres, URL: c.DatabaseURL}},
	}
}

// fillStoreDefaults fills the engines' defaults that derive from other
// keys: SQLite's file in the data dir.
func (c *Config) fillStoreDefaults() {
	if c.Store.Type == "sqlite" && c.Store.SQLite.Path == "" {
		c.Store.SQLite.Path = sqlite.DefaultPath(c.DataDir)
	}
}

// Presence is presence.*: the keys every registry shares and each
// engine's section.
type Presence struct {
	presence.Config `yaml:",inline"`
	Redis           redispresence.Settings `yaml:"redis"`
}

func defaultPresence() Presence {
	return Presence{Config: presence.DefaultConfig(), Redis: redispresence.DefaultSettings()}
}

// presenceEngines lists the presence engines.
func (c Config) presenceEngines() []engine[presence.Engine] {
	return []engine[presence.Engine]{
		{"memory", memory.Engine{}},
		{"redis", redispresence.Engine{Settings: c.Presence.Redis, Password: c.RedisPassword}},
	}
}

// StoreEngine is the engine store.type names; nil for a name no engine
// has (Check reports it).
func (c Config) StoreEngine() store.Engine { return lookup(c.storeEngines(), c.Store.Type) }

// PresenceEngine is the engine presence.type names; nil for a name no
// engine has (Check reports it).
func (c Config) PresenceEngine() presence.Engine { return lookup(c.presenceEngines(), c.Presence.Type) }

// BusEnv is what the bus engine gets from the rest of the configuration.
func (c Config) BusEnv(log *slog.Logger) bus.Env {
	return bus.Env{
		Instance:       c.InstanceID,
		DataDir:        c.DataDir,
		Prod:           c.RunMode == ModeProduction,
		Links:          c.checksLinks(),
		Concurrency:    c.Pipeline.Concurrency,
		PublishTimeout: c.API.PublishTimeout,
		Logger:         log,
	}
}

// StoreEnv is what the store engine gets from the rest of the
// configuration.
func (c Config) StoreEnv(log *slog.Logger, m *telemetry.Metrics) store.Env {
	return store.Env{DataDir: c.DataDir, Logger: log, Metrics: m}
}

// checksLinks reports whether the engines' links are checked: in
// production, unless insecure_links.
func (c Config) checksLinks() bool { return c.RunMode == ModeProduction && !c.InsecureLinks }

// checkEngines checks the three ports' keys, each engine's section, and
// the chosen engines' keys: known, allowed in this mode, complete.
func (c Config) checkEngines(bad func(key, msg string)) {
	prod, links := c.RunMode == ModeProduction, c.checksLinks()
	b := under("bus", bad)
	c.Bus.Config.Check(b)
	c.Bus.NATS.Check(under("bus.nats", bad))
	if e, ok := chosen(c, bad, "bus", c.Bus.Type, c.Bus.engines()); ok {
		e.Check(c.Bus.Config, c.BusEnv(nil), b)
	}

	s := under("store", bad)
	c.Store.Config.Check(s)
	c.Store.Postgres.Check(s)
	if e, ok := chosen(c, bad, "store", c.Store.Type, c.storeEngines()); ok {
		e.Check(c.Store.Config, prod, links, s)
	}

	p := under("presence", bad)
	c.Presence.Config.Check(p)
	if e, ok := chosen(c, bad, "presence", c.Presence.Type, c.presenceEngines()); ok {
		e.Check(c.Presence.Config, prod, links, p)
	}
}

// engine is one entry of an engine list.
type engine[E any] struct {
	name   string
	engine E
}

// sharable is what the lists' engines have in common.
type sharable interface{ Shared() bool }

// lookup returns the engine of list named name, or E's zero value (a nil
// interface).
func lookup[E any](list []engine[E], name string) E {
	for _, e := range list {
		if e.name == name {
			return e.engine
		}
	}
	var none E
	return none
}

// chosen returns the engine of list that <port>.type names, and whether
// its own keys are to be checked: it reports a name no engine has, and an
// engine that serves one instance in production without single_node.
func chosen[E sharable](c Config, bad func(key, msg string), port, name string, list []engine[E]) (E, bool) {
	var all, shared []string
	for _, e := range list {
		all = append(all, e.name)
		if e.engine.Shared() {
			shared = append(shared, e.name)
		}
	}
	for _, e := range list {
		if e.name != name {
			continue
		}
		if !e.engine.Shared() && c.RunMode == ModeProduction && !c.SingleNode {
			bad(port+".type", fmt.Sprintf("%s serves one instance; production needs %s, or single_node: true for one machine", name, orList(shared)))
		}
		return e.engine, true
	}
	bad(port+".type", fmt.Sprintf("must be %s, got %q", orList(all), name))
	var none E
	return none, false
}

// orList joins names as "a, b or c".
func orList(names []string) string {
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// Unused lists the keys the chosen engines ignore (bus.ingress_topic on
// NATS, which names its streams from bus.nats.subject_prefix), for config
// check to say so.
func (c Config) Unused() []string {
	e := c.Bus.Engine()
	if e == nil {
		return nil
	}
	var out []string
	for _, k := range e.Unused() {
		out = append(out, "bus."+k)
	}
	return out
}
