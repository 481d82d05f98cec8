package store_test

import (
	"encoding/base64"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/go-routing-service/routingservice/internal/store"
)

func TestCursorRoundTrip(t *testing.T) {
	for _, seq := range []int64{1, 35, 36, 1 << 40, math.MaxInt64} {
		c := store.EncodeCursor(seq)
		if strings.ContainsAny(c, "+/=") {
			t.Errorf("EncodeCursor(%d) = %q: not unpadded base64url", seq, c)
		}
		got, err := store.DecodeCursor(c)
		if err != nil || got != seq {
			t.Errorf("DecodeCursor(EncodeCursor(%d)) = %d, %v", seq, got, err)
		}
	}
	if got, err := store.DecodeCursor(""); got != 0 || err != nil {
		t.Errorf(`DecodeCursor("") = %d, %v; want 0, nil`, got, err)
	}
}

func TestDecodeCursorRejects(t *testing.T) {
	b64 := base64.RawURLEncoding.EncodeToString
	for _, c := range []string{
		"zzz!",                              // not base64url
		b64([]byte("s")),                    // no sequence
		b64([]byte("x1")),                   // wrong prefix
		b64([]byte("s0")),                   // not positive
		b64([]byte("s-1")),                  // negative
		b64([]byte("s1.5")),                 // not base 36
		b64([]byte("szzzzzzzzzzzzzzzzzzz")), // overflows int64
		store.EncodeCursor(7) + "=",         // padded
	} {
		if seq, err := store.DecodeCursor(c); !errors.Is(err, store.ErrBadCursor) {
			t.Errorf("DecodeCursor(%q) = %d, %v; want ErrBadCursor", c, seq, err)
		}
	}
}
