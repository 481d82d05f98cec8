package realtime

import (
	"encoding/json"
	"testing"

	"github.com/go-routing-service/routingservice/internal/envelope"
)

// A client frame decodes to a valid ack or to an error to answer; never a
// panic, never both, never an ack the contract refuses.
func FuzzClientFrame(f *testing.F) {
	f.Add([]byte(`{"type":"ack","ids":["01J9Z3MSG"]}`))
	f.Add([]byte(`{"type":"ack","ids":[]}`))
	f.Add([]byte(`{"type":"subscribe"}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ids, code, msg := decodeClientFrame(data)
		if code != "" {
			if ids != nil || msg == "" {
				t.Fatalf("error %q %q with ids %v", code, msg, ids)
			}
			return
		}
		if err := envelope.ValidateAckIDs(ids); err != nil {
			t.Fatalf("accepted ack ids %q: %v", ids, err)
		}
		var in struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(data, &in) != nil || in.Type != "ack" {
			t.Fatalf("accepted a frame that is not an ack: %q", data)
		}
	})
}
