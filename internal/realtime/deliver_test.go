package realtime

import (
	"bytes"
	"testing"
	"time"

	"github.com/gobwas/ws"

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

// A frame header is written as gobwas/ws writes it, for every length
// form (7-bit, 16-bit, 64-bit).
func TestFrameHeaderIsWSHeader(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 1 << 20} {
		var want bytes.Buffer
		if err := ws.WriteHeader(&want, ws.Header{Fin: true, OpCode: ws.OpText, Length: int64(n)}); err != nil {
			t.Fatal(err)
		}
		if got := appendFrameHeader(nil, ws.OpText, n); !bytes.Equal(got, want.Bytes()) {
			t.Errorf("length %d: header %x, want %x", n, got, want.Bytes())
		}
	}
}

// BenchmarkMessageFrame makes the frame of a message with a 256-byte
// payload: from the envelope (encoded here, as the backlog does) and from
// its wire form (as live delivery does).
func BenchmarkMessageFrame(b *testing.B) {
	env := &envelope.Envelope{ID: envelope.NewIDs().New(envelope.Now()), Sender: "urn:sm:user:alice", Recipient: "urn:sm:user:bob",
		Payload: make([]byte, 256), CreatedAt: envelope.Now()}
	wire, err := envelope.Marshal(env)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("envelope", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := encodeMessage(env); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("wire", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			encodeMessageWire(wire)
		}
	})
}
