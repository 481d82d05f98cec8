package envelope

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidateURN(t *testing.T) {
	cases := []struct {
		urn string
		ok  bool
	}{
		{"urn:sm:user:alice", true},
		{"urn:a:b:c", true},
		{"urn:sm-2:device-kind:A.b_c~d-9", true},
		{"urn:" + strings.Repeat("n", 32) + ":" + strings.Repeat("k", 32) + ":" + strings.Repeat("i", 128), true},
		{"", false},
		{"urn:", false},
		{"alice", false},
		{"URN:sm:user:alice", false},
		{"urn:sm:user", false},
		{"urn::user:alice", false},
		{"urn:sm::alice", false},
		{"urn:sm:user:", false},
		{"urn:SM:user:alice", false},
		{"urn:sm:User:alice", false},
		{"urn:sm_x:user:alice", false},
		{"urn:sm:user:ali ce", false},
		{"urn:sm:user:alice:extra", false},
		{"urn:sm:user:alice/x", false},
		{"urn:sm:user:al%69ce", false},
		{"urn:sm:user:ålice", false},
		{"urn:" + strings.Repeat("n", 33) + ":user:alice", false},
		{"urn:sm:" + strings.Repeat("k", 33) + ":alice", false},
		{"urn:sm:user:" + strings.Repeat("i", 129), false},
	}
	for _, tc := range cases {
		err := ValidateURN(tc.urn)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateURN(%q) = %v, want ok=%v", tc.urn, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidURN) {
			t.Errorf("ValidateURN(%q) error %v does not wrap ErrInvalidURN", tc.urn, err)
		}
	}
}

func TestWireRoundTrip(t *testing.T) {
	ids := NewIDs()
	now := Now()
	in := &Envelope{ID: ids.New(now), Sender: "urn:sm:user:a", Recipient: "urn:sm:user:b", Type: "chat",
		Payload: []byte{0, 1, 2, 0xff}, Ephemeral: true, CreatedAt: now}
	b, err := Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out Envelope
	if err := Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out.ID != in.ID || out.Sender != in.Sender || out.Recipient != in.Recipient || out.Type != in.Type ||
		string(out.Payload) != string(in.Payload) || !out.Ephemeral || !out.CreatedAt.Equal(in.CreatedAt) {
		t.Fatalf("round trip: %+v != %+v", out, *in)
	}
	if err := Unmarshal([]byte(`{"id":"x","sender":"bad","recipient":"urn:a:b:c","created_at":"2026-01-01T00:00:00Z"}`), &out); err == nil {
		t.Fatal("invalid sender accepted")
	}
	if err := Unmarshal([]byte(`{`), &out); err == nil {
		t.Fatal("garbage accepted")
	}
}

func TestIDsAreUniqueAndSortable(t *testing.T) {
	ids := NewIDs()
	at := time.Now()
	prev := ""
	seen := map[string]bool{}
	for i := 0; i < 10000; i++ {
		id := ids.New(at)
		if seen[id] || id <= prev {
			t.Fatalf("id %d %s not unique and increasing after %s", i, id, prev)
		}
		seen[id], prev = true, id
	}
}

func TestValidateAckIDs(t *testing.T) {
	many := func(n int) []string {
		ids := make([]string, n)
		for i := range ids {
			ids[i] = "id"
		}
		return ids
	}
	cases := []struct {
		name string
		ids  []string
		want string // "" for valid; else a part of the message
	}{
		{"one id", []string{"01J0000000000000000000000A"}, ""},
		{"the most ids", many(MaxAckIDs), ""},
		{"the longest id", []string{strings.Repeat("i", MaxIDLen)}, ""},
		{"nil", nil, "1 to 500 message ids"},
		{"empty", []string{}, "1 to 500 message ids"},
		{"too many ids", many(MaxAckIDs + 1), "1 to 500 message ids"},
		{"empty id", []string{"a", ""}, "1-64 characters"},
		{"id too long", []string{strings.Repeat("i", MaxIDLen+1)}, "1-64 characters"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateAckIDs(tc.ids)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("rejected: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

func benchEnvelope() *Envelope {
	now := Now()
	return &Envelope{ID: NewIDs().New(now), Sender: "urn:sm:user:alice", Recipient: "urn:sm:user:bob",
		Type: "chat", Payload: make([]byte, 256), CreatedAt: now}
}

// BenchmarkMarshal encodes an envelope with a 256-byte payload (the API's
// bus message and the store's row).
func BenchmarkMarshal(b *testing.B) {
	e := benchEnvelope()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Marshal(e); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnmarshal decodes it (the pipeline, per ingress message).
func BenchmarkUnmarshal(b *testing.B) {
	data, err := Marshal(benchEnvelope())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		var e Envelope
		if err := Unmarshal(data, &e); err != nil {
			b.Fatal(err)
		}
	}
}
