package memory

import (
	"context"

	"github.com/go-routing-service/routingservice/internal/presence"
)

// Engine is presence in process (presence.type memory): one instance only.
type Engine struct{}

var _ presence.Engine = Engine{}

// Shared: the registry lives in the process.
func (Engine) Shared() bool { return false }

// Check: the engine has no keys of its own.
func (Engine) Check(presence.Config, bool, bool, func(key, msg string)) {}

// Preflight: the engine names no file.
func (Engine) Preflight(func(key string, err error)) {}

// Open makes the registry.
func (Engine) Open(_ context.Context, c presence.Config) (presence.Presence, error) {
	return New(c.TTL), nil
}

// Inspect: there is nothing to reach.
func (Engine) Inspect(context.Context, presence.Config) (string, error) {
	return "in process (memory), nothing to reach", nil
}
