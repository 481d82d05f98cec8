package realtime

import (
	"strings"
	"testing"
)

// BenchmarkDecodeClientFrame decodes the two frames a chat client sends
// most: a send of a 256-byte payload, and an ack of 16 ids.
func BenchmarkDecodeClientFrame(b *testing.B) {
	send := []byte(`{"type":"send","ref":"r-12345","message":{"recipient":"urn:sm:user:bob","payload":"` + strings.Repeat("A", 344) + `"}}`)
	ids := make([]string, 16)
	for i := range ids {
		ids[i] = `"01JF8Z3Q4W5E6R7T8Y9U0I1O2P"`
	}
	ack := []byte(`{"type":"ack","ids":[` + strings.Join(ids, ",") + `]}`)
	b.Run("send", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if m := decodeClientFrame(send); m.kind != frameSend || m.code != "" {
				b.Fatalf("%+v", m)
			}
		}
	})
	b.Run("ack16", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if m := decodeClientFrame(ack); m.kind != frameAck || m.code != "" {
				b.Fatalf("%+v", m)
			}
		}
	})
}
