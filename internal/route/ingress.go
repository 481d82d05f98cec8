package route

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus"
	"github.com/go-routing-service/routingservice/internal/envelope"
)

// consume routes the routing events of the ingress topic until ctx is
// done, in batches of what is waiting (one store call and one presence
// lookup per batch).
func (c *Core) consume(ctx context.Context) error {
	return c.bus.ReceiveIngressBatch(ctx, max(1, c.o.MaxBatch), c.routeIngress)
}

// busOutage marks err, a routing failure, as bus.ErrUnavailable when the
// bus does not answer its ping (asked once per batch, *down remembers
// it): a delivery event that could not be published while the bus is
// down (or its stream elects a leader) is held and tried again like a
// store or presence outage, costing no attempt, rather than dead-lettered
// once its attempts run out during the outage.
func (c *Core) busOutage(ctx context.Context, err error, down **bool) error {
	if *down == nil {
		d := errors.Is(outage(ctx, c.bus, err), bus.ErrUnavailable)
		*down = &d
	}
	if **down {
		return fmt.Errorf("%w: %w", bus.ErrUnavailable, err)
	}
	return err
}

// routeIngress is the ingress consumer's batch handler: it decodes the
// routing events and routes them, one error per message. An undecodable
// or invalid envelope is a permanent failure (bus.ErrPermanent:
// dead-lettered at once); a store, presence or bus outage is
// bus.ErrUnavailable (the bus holds the message and tries it again,
// without counting an attempt, until the backend is back); other errors
// are retried.
//
// The events of this release and the previous one are the same: the
// envelope's JSON, with the attribute bus.AttrStored when the envelope is
// stored already. Only an envelope that is not (an event published by
// hand, or by a release that stored in the routing) is decoded whole, to
// be stored.
func (c *Core) routeIngress(ctx context.Context, ms []*bus.Message) []error {
	start := time.Now()
	errs := make([]error, len(ms))
	evs := make([]Event, 0, len(ms))
	at := make([]int, 0, len(ms))
	for i, m := range ms {
		env := new(envelope.Envelope)
		stored := m.Attributes[bus.AttrStored] != ""
		err := envelope.DecodeHeader(m.Data, env)
		if err == nil && !stored && !env.Ephemeral {
			err = envelope.Unmarshal(m.Data, env)
		}
		if err != nil {
			c.log.WarnContext(bus.ContextOf(ctx, m), "route: unprocessable ingress message", "bus_id", m.ID, "err", err)
			errs[i] = fmt.Errorf("%w: %v", bus.ErrPermanent, err)
			continue
		}
		evs = append(evs, Event{Envelope: env, Data: m.Data, Stored: stored, Trace: m.Trace})
		at = append(at, i)
	}
	if len(evs) > 0 {
		var busDown *bool // asked once per batch
		for j, err := range c.route(ctx, evs, c.marks != nil) {
			if err != nil && !errors.Is(err, bus.ErrUnavailable) && !errors.Is(err, bus.ErrPermanent) {
				err = c.busOutage(ctx, err, &busDown)
			}
			errs[at[j]] = err
		}
	}
	c.countRouted(start, errs)
	return errs
}
