package realtime

import (
	"context"
	"slices"
	"time"

	"github.com/go-routing-service/routingservice/internal/presence"
)

// presenceProbe is how often the instance checks that the presence
// registry still holds its entries.
const presenceProbe = time.Second

// marker is the registry entry by which the instance notices that the
// registry lost its entries (restarted empty, flushed, or its entries
// expired during an outage). It is a connection of a reserved user that
// no client can be (user URNs are urn:sm:user:...).
func (s *Server) marker() presence.Conn {
	return presence.Conn{User: "urn:sm:instance:" + s.o.Instance, Instance: s.o.Instance, ID: "presence-marker"}
}

// heartbeat refreshes every local connection's presence entry each
// Heartbeat, and registers them all again as soon as the registry answers
// after an outage or is found without this instance's entries (checked
// every presenceProbe), so that live delivery resumes at once rather than
// at the next heartbeat.
func (s *Server) heartbeat(ctx context.Context) {
	t := time.NewTicker(min(presenceProbe, s.o.Heartbeat))
	defer t.Stop()
	lastRefresh := time.Now()
	healthy := s.refreshAll(ctx) == nil
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		lost := false
		switch {
		case !healthy:
			pctx, cancel := context.WithTimeout(ctx, presenceProbe)
			err := s.presence.Ping(pctx)
			cancel()
			if err != nil {
				continue
			}
			s.log.Info("presence registry answers again; registering every connection")
			lost = true
		case time.Since(lastRefresh) < s.o.Heartbeat:
			pctx, cancel := context.WithTimeout(ctx, presenceProbe)
			insts, err := s.presence.Instances(pctx, s.marker().User)
			cancel()
			if err != nil {
				healthy = false
				continue
			}
			if slices.Contains(insts, s.o.Instance) {
				continue
			}
			s.log.Warn("presence registry lost this instance's entries; registering every connection again")
			lost = true
		}
		healthy = s.refreshAll(ctx) == nil
		lastRefresh = time.Now()
		if healthy && lost {
			// Messages routed while this instance's entries were missing
			// went to the store only: send each connection its backlog.
			for _, ss := range s.hub.all() {
				ss.requestResync()
			}
		}
	}
}

// refreshAll registers (again) every local connection and the marker.
func (s *Server) refreshAll(ctx context.Context) error {
	all := s.hub.all()
	conns := make([]presence.Conn, 0, len(all)+1)
	conns = append(conns, s.marker())
	for _, ss := range all {
		conns = append(conns, ss.presenceConn())
	}
	rctx, cancel := context.WithTimeout(ctx, s.o.Heartbeat)
	defer cancel()
	if err := s.presence.Refresh(rctx, conns); err != nil {
		s.log.Warn("presence refresh failed", "conns", len(conns)-1, "err", err)
		return err
	}
	return nil
}
