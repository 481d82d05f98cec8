package route

import (
	"strconv"
	"time"
)

// Kind is what went wrong with an Accept: what the caller branches on (an
// HTTP status, a WebSocket send_error code).
type Kind int

// The kinds of Accept's errors. Whatever the kind, nothing was accepted.
const (
	// KindInvalid: the message breaks the client contract; Error.Field
	// names what to fix.
	KindInvalid Kind = iota + 1
	// KindTooLarge: the payload is over Options.MaxPayloadBytes.
	KindTooLarge
	// KindQueueFull: the recipient has Options.MaxPendingPerRecipient
	// messages pending. Room comes when they acknowledge; no delay says
	// when.
	KindQueueFull
	// KindSenderQuota: the sender has as many messages, or payload bytes,
	// pending as Options.MaxPendingPerSender and MaxPendingBytesPerSender
	// allow.
	KindSenderQuota
	// KindKeyReused: the idempotency key is held by another message whose
	// sending has not finished.
	KindKeyReused
	// KindUnavailable: a backend the message needs (Error.Backend: store or
	// bus) is down.
	KindUnavailable
	// KindOverloaded: routing is too far behind (the ingress backlog is
	// over Options.MaxBacklog).
	KindOverloaded
)

// Field names of KindInvalid errors: the request fields of the client
// contract.
const (
	FieldRecipient      = "recipient"
	FieldPayload        = "payload"
	FieldType           = "type"
	FieldIdempotencyKey = "idempotency_key"
	// FieldEphemeral: an ephemeral message in a batch (AcceptBatch).
	FieldEphemeral = "ephemeral"
)

// Error is an error of Accept. errors.Is(err, ErrQueueFull) (and the
// other sentinels) tells its kind.
type Error struct {
	Kind Kind
	// Field is the request field at fault (KindInvalid).
	Field string
	// Backend is the backend that is down (KindUnavailable): "store" or
	// "bus".
	Backend string
	// RetryAfter, when positive, is how long to wait before a retry may
	// succeed.
	RetryAfter time.Duration
	// Message says what happened and what to do, fit to show the client:
	// it names no secret and no payload.
	Message string
}

func (e *Error) Error() string { return e.Message }

// Is reports whether target is an *Error of the same kind: the sentinels
// below match every error of their kind.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Kind == e.Kind
}

// Sentinels, one per kind, for errors.Is.
var (
	ErrInvalid     = &Error{Kind: KindInvalid, Message: "invalid message"}
	ErrTooLarge    = &Error{Kind: KindTooLarge, Message: "payload too large"}
	ErrQueueFull   = &Error{Kind: KindQueueFull, Message: "recipient queue full"}
	ErrSenderQuota = &Error{Kind: KindSenderQuota, Message: "sender quota exceeded"}
	ErrKeyReused   = &Error{Kind: KindKeyReused, Message: "idempotency key reused"}
	ErrUnavailable = &Error{Kind: KindUnavailable, Message: "backend unavailable"}
	ErrOverloaded  = &Error{Kind: KindOverloaded, Message: "routing overloaded"}
)

// ItemError is an error of AcceptBatch that one of its messages caused:
// Err, of the message at Index (0-based, in the order given). errors.As
// finds the *Error through it, and errors.Is its kind. Whatever the
// error, nothing of the batch was accepted.
type ItemError struct {
	Index int
	Err   *Error
}

func (e *ItemError) Error() string { return "message " + strconv.Itoa(e.Index) + ": " + e.Err.Message }

// Unwrap returns the message's *Error.
func (e *ItemError) Unwrap() error { return e.Err }

func invalid(field, message string) *Error {
	return &Error{Kind: KindInvalid, Field: field, Message: message}
}

func tooLarge(max int) *Error {
	return &Error{Kind: KindTooLarge, Field: FieldPayload, Message: "payload is over " + strconv.Itoa(max) + " bytes"}
}

// unavailable is the error of an Accept that backend failed: nothing was
// accepted, a retry a second later may succeed.
func unavailable(backend string) *Error {
	return &Error{Kind: KindUnavailable, Backend: backend, RetryAfter: time.Second,
		Message: "the " + backend + " is unavailable; nothing was accepted, retry later"}
}

// errOverloaded is the error of an Accept refused while routing is behind.
var errOverloaded = &Error{Kind: KindOverloaded, RetryAfter: time.Second,
	Message: "the routing pipeline is behind; nothing was accepted, retry later"}
