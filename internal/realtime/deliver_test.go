package realtime

import (
	"bytes"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
)

// The frame made from an envelope's wire form (DeliverEncoded) is the
// frame made from the envelope (Deliver), byte for byte: header, event
// and envelope.
func TestFrameFromWireFormIsTheEncodedFrame(t *testing.T) {
	now := envelope.Now()
	for _, env := range []*envelope.Envelope{
		{ID: "01J9Z3", Sender: "urn:sm:user:a", Recipient: "urn:sm:user:b", Type: "chat", Payload: []byte("hi"), CreatedAt: now},
		{ID: "01J9Z4", Sender: "urn:sm:user:a", Recipient: "urn:sm:user:b", Payload: bytes.Repeat([]byte{0xfe}, 200), Ephemeral: true, CreatedAt: now.Add(time.Millisecond)},
		{ID: "01J9Z5", Sender: "urn:sm:user:a", Recipient: "urn:sm:user:b", Type: "<&>", Payload: make([]byte, 70_000), CreatedAt: now},
	} {
		want, err := encodeMessage(env)
		if err != nil {
			t.Fatal(err)
		}
		wire, err := envelope.Marshal(env)
		if err != nil {
			t.Fatal(err)
		}
		if got := encodeMessageWire(wire); !bytes.Equal(got, want) {
			t.Fatalf("%s: frame from the wire form\n%q\nwant\n%q", env.ID, got[:min(len(got), 120)], want[:min(len(want), 120)])
		}
	}
}
