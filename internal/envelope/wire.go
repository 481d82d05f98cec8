package envelope

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// The wire form of an envelope is its JSON (Marshal). A message is
// encoded once, when it is accepted (AppendJSON, with the payload as the
// base64 text it arrived in); those bytes are what the bus carries and
// what a live WebSocket frame holds. A reader that routes or delivers it
// decodes what it needs (DecodeHeader), never the payload.

// AppendJSON appends the wire form of e to dst with payload, the standard
// base64 of e.Payload, as the value of "payload" (e.Payload is not read).
// It is Marshal(e) byte for byte when payload is
// base64.StdEncoding.EncodeToString(e.Payload), e.Payload is not nil
// (Marshal writes null for nil) and e.CreatedAt is within the years
// 0-9999.
func AppendJSON(dst []byte, e *Envelope, payload string) []byte {
	dst = append(dst, `{"id":`...)
	dst = appendString(dst, e.ID)
	dst = append(dst, `,"sender":`...)
	dst = appendString(dst, e.Sender)
	dst = append(dst, `,"recipient":`...)
	dst = appendString(dst, e.Recipient)
	if e.Type != "" {
		dst = append(dst, `,"type":`...)
		dst = appendString(dst, e.Type)
	}
	dst = append(dst, `,"payload":`...)
	dst = appendString(dst, payload)
	dst = append(dst, `,"ephemeral":`...)
	dst = strconv.AppendBool(dst, e.Ephemeral)
	dst = append(dst, `,"created_at":"`...)
	dst = e.CreatedAt.AppendFormat(dst, time.RFC3339Nano)
	return append(dst, `"}`...)
}

// JSONLen is the length of AppendJSON's result for e with a payload text
// of n bytes, or more, when no field needs escaping.
func JSONLen(e *Envelope, n int) int {
	return len(`{"id":"","sender":"","recipient":"","type":"","payload":"","ephemeral":false,"created_at":""}`) +
		len(e.ID) + len(e.Sender) + len(e.Recipient) + len(e.Type) + n + len(time.RFC3339Nano) + 6
}

// appendString appends s as a JSON string the way encoding/json writes
// it (HTML characters escaped); the plain ASCII of ids, URNs and base64
// is copied as it is.
func appendString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(dst, q...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// CanonicalBase64 reports, when s is the standard base64 that
// base64.StdEncoding makes of some bytes (padded, the standard alphabet
// only, zero bits past the last byte), the number of those bytes. ok is
// false otherwise: s may still decode (StdEncoding skips line breaks and
// takes non-zero trailing bits), or not.
func CanonicalBase64[T string | []byte](s T) (n int, ok bool) {
	if len(s)%4 != 0 {
		return 0, false
	}
	if len(s) == 0 {
		return 0, true
	}
	pad := 0
	if s[len(s)-1] == '=' {
		pad++
		if s[len(s)-2] == '=' {
			pad++
		}
	}
	body := len(s) - pad
	for i := 0; i < body; i++ {
		if base64Value[s[i]] == 0xff {
			return 0, false
		}
	}
	// The bits of the last character past the last byte must be zero.
	switch last := base64Value[s[body-1]]; pad {
	case 1:
		if last&0x03 != 0 {
			return 0, false
		}
	case 2:
		if last&0x0f != 0 {
			return 0, false
		}
	}
	return len(s)/4*3 - pad, true
}

// base64Value is the value of each character of the standard alphabet,
// 0xff for any other byte.
var base64Value = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := 0; i < len(alphabet); i++ {
		t[alphabet[i]] = byte(i)
	}
	return t
}()

// DecodeHeader decodes the wire form b into e, every field but the
// payload, and validates it as Unmarshal does. The payload is checked to
// be standard base64, as Unmarshal would decode it, without decoding it
// when it is canonical; e.Payload is left nil.
func DecodeHeader(b []byte, e *Envelope) error {
	var h header
	if err := json.Unmarshal(b, &h); err != nil {
		return fmt.Errorf("envelope: decode: %w", err)
	}
	*e = Envelope{ID: h.ID, Sender: h.Sender, Recipient: h.Recipient, Type: h.Type, Ephemeral: h.Ephemeral, CreatedAt: h.CreatedAt}
	return e.Validate()
}

// header is an envelope's wire form without its payload's bytes.
type header struct {
	ID        string       `json:"id"`
	Sender    string       `json:"sender"`
	Recipient string       `json:"recipient"`
	Type      string       `json:"type"`
	Payload   payloadCheck `json:"payload"`
	Ephemeral bool         `json:"ephemeral"`
	CreatedAt time.Time    `json:"created_at"`
}

// payloadCheck checks a payload's JSON value, keeping nothing.
type payloadCheck struct{}

var errPayload = errors.New("payload is not a base64 string")

func (*payloadCheck) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' {
		return errPayload
	}
	if _, ok := CanonicalBase64(b[1 : len(b)-1]); ok {
		return nil
	}
	var p []byte // what Unmarshal does with it: escapes, line breaks, trailing bits
	return json.Unmarshal(b, &p)
}
