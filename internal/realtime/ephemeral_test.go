package realtime

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/go-routing-service/routingservice/internal/envelope"
)

// The acks of ephemeral messages delivered on a connection do not reach
// the store (it never held them); the others do, and an ack of ephemeral
// messages only makes no store call at all.
func TestEphemeralAcksStayOutOfTheStore(t *testing.T) {
	st := &ackStore{}
	s, m, url := newServerWith(t, Options{}, st)
	const user = "urn:sm:user:eph"
	conn, br := rawDial(t, url, user)
	waitFor(t, "registration", func() bool { return testutil.ToFloat64(m.WSConnections) == 1 })
	ids := envelope.NewIDs()
	eph, stored := ids.New(time.Now()), ids.New(time.Now())
	for _, e := range []struct {
		id        string
		ephemeral bool
	}{{eph, true}, {stored, false}} {
		s.Deliver(context.Background(), &envelope.Envelope{ID: e.id, Sender: "urn:sm:user:a", Recipient: user,
			Payload: []byte("hi"), Ephemeral: e.ephemeral, CreatedAt: envelope.Now()})
		if got := frameID(readServerFrame(t, conn, br).Payload); got != e.id {
			t.Fatalf("frame %q, want %s", got, e.id)
		}
	}
	acks := testutil.ToFloat64(m.WSAcks)
	write := func(frame []byte) {
		t.Helper()
		if _, err := conn.Write(ws.MustCompileFrame(ws.MaskFrame(ws.NewTextFrame(frame)))); err != nil {
			t.Fatal(err)
		}
	}
	write([]byte(`{"type":"ack","ids":["` + eph + `","` + stored + `"]}`))
	waitFor(t, "the ack", func() bool { return len(st.acked()) == 1 })
	if got := st.acked()[0]; !slices.Equal(got, []string{stored}) {
		t.Fatalf("the store was asked to ack %v, want [%s] only", got, stored)
	}
	// The ephemeral id is forgotten once acked: acked again, it goes to
	// the store like an unknown id.
	eph2 := ids.New(time.Now())
	s.Deliver(context.Background(), &envelope.Envelope{ID: eph2, Sender: "urn:sm:user:a", Recipient: user,
		Payload: []byte("hi"), Ephemeral: true, CreatedAt: envelope.Now()})
	readServerFrame(t, conn, br)
	write([]byte(`{"type":"ack","ids":["` + eph2 + `"]}`))
	waitFor(t, "the ephemeral-only ack counted", func() bool { return testutil.ToFloat64(m.WSAcks) == acks+2 })
	write(ackFrame(eph2))
	waitFor(t, "the repeated ack", func() bool { return len(st.acked()) == 2 })
	if got := st.acked(); len(got) != 2 || !slices.Equal(got[1], []string{eph2}) {
		t.Fatalf("store acks %v: want the ephemeral-only ack kept out, its repeat passed on", got)
	}
}
