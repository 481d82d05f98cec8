package envelope

import (
	"bytes"
	"regexp"
	"testing"
)

// urnPattern is the contract's URN grammar, written independently of
// ValidateURN.
var urnPattern = regexp.MustCompile(`^urn:[a-z0-9-]{1,32}:[a-z0-9-]{1,32}:[A-Za-z0-9._~-]{1,128}$`)

func FuzzValidateURN(f *testing.F) {
	for _, s := range []string{"urn:sm:user:alice", "urn::user:a", "urn:sm:user:", "URN:sm:user:a", "urn:sm:user:a:b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := ValidateURN(s)
		if want := urnPattern.MatchString(s); (err == nil) != want {
			t.Fatalf("ValidateURN(%q) = %v, grammar says valid=%v", s, err, want)
		}
	})
}

// Decoding the wire form never panics, accepts only valid envelopes, and
// what it accepts encodes and decodes back to the same envelope.
func FuzzUnmarshal(f *testing.F) {
	f.Add([]byte(`{"id":"01J9Z3","sender":"urn:sm:user:alice","recipient":"urn:sm:user:bob","type":"chat","payload":"aGk=","created_at":"2026-11-27T10:00:00.123Z"}`))
	f.Add([]byte(`{"id":"","sender":"x"}`))
	f.Add([]byte(`{"payload":"!!"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var e Envelope
		if err := Unmarshal(b, &e); err != nil {
			return
		}
		if err := e.Validate(); err != nil {
			t.Fatalf("Unmarshal accepted an invalid envelope: %v", err)
		}
		enc, err := Marshal(&e)
		if err != nil {
			t.Fatalf("Marshal of a decoded envelope: %v", err)
		}
		var again Envelope
		if err := Unmarshal(enc, &again); err != nil {
			t.Fatalf("decode of its own encoding %s: %v", enc, err)
		}
		enc2, _ := Marshal(&again)
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("round trip changed the envelope:\n%s\n%s", enc, enc2)
		}
	})
}
