// Package envelope defines the message envelope that the service routes, the
// URNs that name its parties, and their validation and wire encoding.
//
// The payload is opaque ciphertext: nothing in this package (or the service)
// reads, logs or traces it.
package envelope

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"
)

// Envelope is one message as the service stores and delivers it.
type Envelope struct {
	ID        string    `json:"id"`
	Sender    string    `json:"sender"`
	Recipient string    `json:"recipient"`
	Type      string    `json:"type,omitempty"`
	Payload   []byte    `json:"payload"`
	Ephemeral bool      `json:"ephemeral"`
	CreatedAt time.Time `json:"created_at"`
}

// Limits on envelope fields that are fixed by the client contract.
const (
	MaxTypeLen = 64
	// MaxIDLen bounds a message id named by a client (in an ack).
	MaxIDLen = 64
	// MaxAckIDs bounds the ids of one acknowledgement.
	MaxAckIDs = 500
)

// Errors returned by validation. They are wrapped with detail; compare with errors.Is.
var (
	ErrInvalidURN  = errors.New("invalid urn")
	ErrInvalidType = errors.New("invalid type")
)

// ValidateURN reports whether s has the form urn:<namespace>:<kind>:<id>, where
// namespace and kind are 1-32 characters of [a-z0-9-] and id is 1-128
// characters of [A-Za-z0-9._~-].
func ValidateURN(s string) error {
	const prefix = "urn:"
	if len(s) < len(prefix) || s[:len(prefix)] != prefix {
		return fmt.Errorf("%w: %q does not start with \"urn:\"", ErrInvalidURN, truncate(s))
	}
	rest := s[len(prefix):]
	var parts [3]string
	for i := 0; i < 2; i++ {
		j := indexByte(rest, ':')
		if j < 0 {
			return fmt.Errorf("%w: %q is not urn:<namespace>:<kind>:<id>", ErrInvalidURN, truncate(s))
		}
		parts[i], rest = rest[:j], rest[j+1:]
	}
	parts[2] = rest
	for i, name := range [2]string{"namespace", "kind"} {
		p := parts[i]
		if len(p) < 1 || len(p) > 32 {
			return fmt.Errorf("%w: %s must be 1-32 characters", ErrInvalidURN, name)
		}
		for k := 0; k < len(p); k++ {
			c := p[k]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("%w: %s may contain only [a-z0-9-]", ErrInvalidURN, name)
			}
		}
	}
	id := parts[2]
	if len(id) < 1 || len(id) > 128 {
		return fmt.Errorf("%w: id must be 1-128 characters", ErrInvalidURN)
	}
	for k := 0; k < len(id); k++ {
		c := id[k]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '~' || c == '-') {
			return fmt.Errorf("%w: id may contain only [A-Za-z0-9._~-]", ErrInvalidURN)
		}
	}
	return nil
}

// ValidateType checks the optional free-text type: at most MaxTypeLen bytes of valid UTF-8.
func ValidateType(t string) error {
	if len(t) > MaxTypeLen {
		return fmt.Errorf("%w: longer than %d characters", ErrInvalidType, MaxTypeLen)
	}
	return nil
}

// ValidateAckIDs checks the ids of an acknowledgement: 1 to MaxAckIDs ids
// of 1 to MaxIDLen characters each. The error's text says what to fix and
// is fit to show to the client.
func ValidateAckIDs(ids []string) error {
	if len(ids) < 1 || len(ids) > MaxAckIDs {
		return fmt.Errorf("ids must hold 1 to %d message ids", MaxAckIDs)
	}
	for _, id := range ids {
		if id == "" || len(id) > MaxIDLen {
			return fmt.Errorf("each id must be 1-%d characters", MaxIDLen)
		}
	}
	return nil
}

// Validate checks the fields a sender controls and the ones the server sets.
func (e *Envelope) Validate() error {
	if e.ID == "" {
		return errors.New("envelope: missing id")
	}
	if err := ValidateURN(e.Sender); err != nil {
		return fmt.Errorf("sender: %w", err)
	}
	if err := ValidateURN(e.Recipient); err != nil {
		return fmt.Errorf("recipient: %w", err)
	}
	if err := ValidateType(e.Type); err != nil {
		return err
	}
	if e.CreatedAt.IsZero() {
		return errors.New("envelope: missing created_at")
	}
	return nil
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// IDs makes envelope ids: ULIDs, unique, never reused, and sortable by the
// time they were made (to the millisecond).
type IDs struct {
	mu      sync.Mutex
	entropy io.Reader
}

// NewIDs returns an id source seeded from crypto/rand.
func NewIDs() *IDs {
	return &IDs{entropy: ulid.Monotonic(rand.Reader, 0)}
}

// New returns a new id for time t.
func (g *IDs) New(t time.Time) string {
	g.mu.Lock()
	id := ulid.MustNew(ulid.Timestamp(t), g.entropy)
	g.mu.Unlock()
	return id.String()
}

// Now returns the server's acceptance time for a message, in UTC at millisecond precision.
func Now() time.Time { return time.Now().UTC().Truncate(time.Millisecond) }

// Marshal encodes e in the service's wire form (the JSON of API.md).
func Marshal(e *Envelope) ([]byte, error) { return json.Marshal(e) }

// Unmarshal decodes the wire form into e and validates it.
func Unmarshal(b []byte, e *Envelope) error {
	if err := json.Unmarshal(b, e); err != nil {
		return fmt.Errorf("envelope: decode: %w", err)
	}
	return e.Validate()
}
