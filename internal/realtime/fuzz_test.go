package realtime

import (
	"encoding/json"
	"testing"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/web"
)

// A client frame decodes to a valid ack, a send with a valid ref and a
// message, or an error to answer; never a panic, never both, never an ack
// the contract refuses. A frame whose type is "send" is always answered
// as a send (a send_error, not an error event), and only with
// bad_request when malformed; the ref it carries is one the client gave,
// of 1-64 characters.
func FuzzClientFrame(f *testing.F) {
	f.Add([]byte(`{"type":"ack","ids":["01J9Z3MSG"]}`))
	f.Add([]byte(`{"type":"ack","ids":[]}`))
	f.Add([]byte(`{"type":"subscribe"}`))
	f.Add([]byte(`not json`))
	f.Add([]byte(`{"type":"send","ref":"r1","message":{"recipient":"urn:sm:user:bob","payload":"aGk=","type":"chat","idempotency_key":"k-1"}}`))
	f.Add([]byte(`{"type":"send","ref":"r2","message":{"recipient":"urn:sm:user:bob","payload":"aGk=","ephemeral":true}}`))
	f.Add([]byte(`{"type":"send","ref":"","message":{}}`))
	f.Add([]byte(`{"type":"send","ref":7,"message":"x"}`))
	f.Add([]byte(`{"type":"send","ref":"r3","message":{"recipient":5}}`))
	f.Add([]byte(`{"type":"send","ref":"r4"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m := decodeClientFrame(data)
		var in struct {
			Type string          `json:"type"`
			Ref  json.RawMessage `json:"ref"`
		}
		typed := json.Unmarshal(data, &in) == nil
		if m.code != "" {
			if m.ids != nil || m.msg == "" || m.send != (sendMessage{}) {
				t.Fatalf("error %q %q with ids %v, message %+v", m.code, m.msg, m.ids, m.send)
			}
			if m.kind == frameSend && m.code != web.CodeBadRequest {
				t.Fatalf("a malformed send answered %q, want bad_request", m.code)
			}
		}
		if m.ref != "" {
			var ref string
			if m.kind != frameSend || json.Unmarshal(in.Ref, &ref) != nil || ref != m.ref || !validRef(ref) {
				t.Fatalf("ref %q of a frame whose ref is %s", m.ref, in.Ref)
			}
		}
		if typed && in.Type == "send" && m.kind != frameSend {
			t.Fatalf("a send frame decoded as kind %d: %q", m.kind, data)
		}
		switch {
		case m.code != "":
		case m.kind == frameAck:
			if err := envelope.ValidateAckIDs(m.ids); err != nil {
				t.Fatalf("accepted ack ids %q: %v", m.ids, err)
			}
			if !typed || in.Type != "ack" {
				t.Fatalf("accepted a frame that is not an ack: %q", data)
			}
		case m.kind == frameSend:
			if m.ref == "" || !typed || in.Type != "send" {
				t.Fatalf("accepted a send without a ref, or a frame that is not a send: %q", data)
			}
		default:
			t.Fatalf("a frame of kind %d neither refused nor an ack or a send: %q", m.kind, data)
		}
	})
}
