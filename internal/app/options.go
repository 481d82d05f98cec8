package app

import (
	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/store"
)

// Options are hooks for tests and fault injection; production runs use New.
type Options struct {
	// WrapStore, when set, wraps the opened store: every role then uses
	// the wrapper (a test injects store outages with it). The App still
	// closes the store it opened.
	WrapStore func(store.Store) store.Store
	// TracerProvider, when set, traces the instance with it (a test's
	// in-memory recorder) instead of what telemetry.traces configures.
	// The App does not shut it down.
	TracerProvider trace.TracerProvider
}

// Bus returns the instance's bus (tests publish on it directly, as a
// misbehaving producer would).
func (a *App) Bus() *bus.Bus { return a.bus }

// AdminSocket is the path of the admin socket ("" when there is none: the
// key admin.socket is "-", or the bus has no dead-letter queues).
func (a *App) AdminSocket() string {
	if a.admin == nil {
		return ""
	}
	return a.admin.path
}
