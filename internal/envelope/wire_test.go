package envelope

import (
	"bytes"
	"encoding/base64"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
)

// AppendJSON writes what Marshal writes, byte for byte, given the
// payload's standard base64: whatever the type holds (HTML characters,
// control characters, non-ASCII, invalid UTF-8), empty or not, ephemeral
// or not, at any millisecond (a payload, if empty, is never nil here).
func TestAppendJSONIsMarshal(t *testing.T) {
	at := time.Date(2026, 11, 27, 10, 0, 0, 123_000_000, time.UTC)
	types := []string{"", "chat", "<b>&amp;</b>", "tab\there", "quote\"back\\slash", "é ü ☃", "\xff\xfe", "line\u2028sep", "\x00\x1f"}
	payloads := [][]byte{{}, []byte("hi"), []byte("hi!"), bytes.Repeat([]byte{0xff, 0x00, 0xfb}, 100)}
	for _, typ := range types {
		for _, p := range payloads {
			for _, eph := range []bool{false, true} {
				for _, created := range []time.Time{at, at.Truncate(time.Second), at.Add(7 * time.Millisecond)} {
					e := &Envelope{ID: "01J9Z3ABCDEFGHJKMNPQRSTVWX", Sender: "urn:sm:user:alice", Recipient: "urn:sm:user:bob",
						Type: typ, Payload: p, Ephemeral: eph, CreatedAt: created}
					want, err := Marshal(e)
					if err != nil {
						t.Fatal(err)
					}
					text := base64.StdEncoding.EncodeToString(p)
					got := AppendJSON(nil, e, text)
					if !bytes.Equal(got, want) {
						t.Fatalf("type %q payload %d bytes:\n got %s\nwant %s", typ, len(p), got, want)
					}
					if n := JSONLen(e, len(text)); typ == "chat" && n < len(got) {
						t.Fatalf("JSONLen %d < %d", n, len(got))
					}
				}
			}
		}
	}
}

// CanonicalBase64 accepts exactly the text StdEncoding makes, with the
// decoded length, and refuses line breaks, missing padding, other
// alphabets and non-zero trailing bits (which StdEncoding decodes but
// never makes).
func TestCanonicalBase64(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for n := range 70 {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		s := base64.StdEncoding.EncodeToString(b)
		if got, ok := CanonicalBase64(s); !ok || got != n {
			t.Fatalf("%q: %d %v, want %d true", s, got, ok, n)
		}
	}
	for _, s := range []string{"aGk", "aGk=\n", "aG\nk=", "aGk_", "aGk-", "aGl=", "aGVsbG9=", "aQ==x", "a===", "====", "aR=="} {
		if _, ok := CanonicalBase64(s); ok {
			t.Errorf("%q taken as canonical", s)
		}
	}
}

// DecodeHeader decodes what Unmarshal decodes, the payload left out, and
// refuses what Unmarshal refuses, a bad payload included.
func TestDecodeHeaderAgreesWithUnmarshal(t *testing.T) {
	for _, b := range []string{
		`{"id":"x","sender":"urn:sm:user:a","recipient":"urn:sm:user:b","type":"chat","payload":"aGk=","ephemeral":true,"created_at":"2026-11-27T10:00:00.123Z"}`,
		`{"id":"x","sender":"urn:sm:user:a","recipient":"urn:sm:user:b","payload":"aG\nk=","created_at":"2026-11-27T10:00:00Z"}`,
		`{"id":"x","sender":"urn:sm:user:a","recipient":"urn:sm:user:b","payload":"aGl=","created_at":"2026-11-27T10:00:00Z"}`,
		`{"id":"x","sender":"urn:sm:user:a","recipient":"urn:sm:user:b","payload":"a\/k=","created_at":"2026-11-27T10:00:00Z"}`,
		`{"id":"x","sender":"urn:sm:user:a","recipient":"urn:sm:user:b","payload":null,"created_at":"2026-11-27T10:00:00Z"}`,
		`{"id":"x","sender":"urn:sm:user:a","recipient":"urn:sm:user:b","created_at":"2026-11-27T10:00:00Z"}`,
		`{"id":"x","sender":"urn:sm:user:a","recipient":"urn:sm:user:b","payload":"!!","created_at":"2026-11-27T10:00:00Z"}`,
		`{"id":"x","sender":"urn:sm:user:a","recipient":"urn:sm:user:b","payload":12,"created_at":"2026-11-27T10:00:00Z"}`,
		`{"id":"x","sender":"nope","recipient":"urn:sm:user:b","payload":"aGk=","created_at":"2026-11-27T10:00:00Z"}`,
		`{"id":"x","sender":"urn:sm:user:a","recipient":"urn:sm:user:b","payload":"aGk="}`,
		`{`,
	} {
		var full, head Envelope
		errFull := Unmarshal([]byte(b), &full)
		errHead := DecodeHeader([]byte(b), &head)
		if (errFull == nil) != (errHead == nil) {
			t.Fatalf("%s: Unmarshal %v, DecodeHeader %v", b, errFull, errHead)
		}
		if errFull != nil {
			continue
		}
		if head.Payload != nil {
			t.Fatalf("%s: DecodeHeader kept a payload", b)
		}
		full.Payload = nil
		if !reflect.DeepEqual(full, head) {
			t.Fatalf("%s: DecodeHeader %+v, Unmarshal %+v", b, head, full)
		}
	}
}

func FuzzAppendJSON(f *testing.F) {
	f.Add("chat", []byte("hi"), false, int64(0))
	f.Add("<&>", []byte{0xff}, true, int64(123))
	f.Fuzz(func(t *testing.T, typ string, payload []byte, eph bool, ms int64) {
		e := &Envelope{ID: "01J9Z3", Sender: "urn:sm:user:a", Recipient: "urn:sm:user:b", Type: typ, Payload: payload,
			Ephemeral: eph, CreatedAt: time.UnixMilli(1_800_000_000_000 + ms%1e12).UTC()}
		want, err := Marshal(e)
		if err != nil {
			t.Skip()
		}
		if got := AppendJSON(nil, e, base64.StdEncoding.EncodeToString(payload)); !bytes.Equal(got, want) {
			t.Fatalf("\n got %s\nwant %s", got, want)
		}
	})
}
