package app

import (
	"context"
	"fmt"
	"time"

	"github.com/go-routing-service/routingservice/internal/telemetry"
)

// openTracing sets up the tracer provider telemetry.traces asks for (or
// the one the options give). With otlp, closing the App flushes the spans
// still buffered, after every role has stopped.
func (a *App) openTracing(ctx context.Context) error {
	if a.opts.TracerProvider != nil {
		a.tp = a.opts.TracerProvider
		return nil
	}
	if a.cfg.Telemetry.Traces != "otlp" {
		return nil
	}
	tp, err := telemetry.NewTracerProvider(ctx, telemetry.TracingConfig{Config: a.cfg.Telemetry, InstanceID: a.cfg.InstanceID})
	if err != nil {
		return fmt.Errorf("config key telemetry.traces: %w", err)
	}
	a.tp = tp
	a.closers = append(a.closers, func() error {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := tp.Shutdown(sctx); err != nil {
			return fmt.Errorf("flushing traces: %w", err)
		}
		return nil
	})
	a.log.Info("traces", "export", "otlp")
	return nil
}
