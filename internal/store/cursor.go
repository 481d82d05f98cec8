package store

import (
	"encoding/base64"
	"fmt"
	"strconv"
)

// Cursors are the base64url form of "s" followed by the base-36 store
// sequence of the last envelope of a page. Clients treat them as opaque.
const cursorPrefix = 's'

// EncodeCursor returns the opaque cursor that resumes a page after the
// envelope with store sequence seq (seq > 0).
func EncodeCursor(seq int64) string {
	b := strconv.AppendInt([]byte{cursorPrefix}, seq, 36)
	return base64.RawURLEncoding.EncodeToString(b)
}

// DecodeCursor returns the store sequence a cursor made by EncodeCursor
// names, and 0 for the empty cursor (the start). Any other string fails
// with an error wrapping ErrBadCursor.
func DecodeCursor(c string) (int64, error) {
	if c == "" {
		return 0, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) < 2 || b[0] != cursorPrefix {
		return 0, fmt.Errorf("cursor %.40q: %w", c, ErrBadCursor)
	}
	seq, err := strconv.ParseInt(string(b[1:]), 36, 64)
	if err != nil || seq <= 0 {
		return 0, fmt.Errorf("cursor %.40q: %w", c, ErrBadCursor)
	}
	return seq, nil
}
