// Package store is the port to the durable store: pending envelopes (the
// source of truth until the recipient acknowledges them), idempotency
// records, and push targets.
//
// Adapters live in sub-packages (sqlite, postgres) and pass the conformance
// suite in storetest.
package store

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
)

// ErrClosed is returned by operations on a closed store.
var ErrClosed = errors.New("store closed")

// ErrBadCursor is returned for a cursor the store did not make.
var ErrBadCursor = errors.New("bad cursor")

// ErrTooManyTargets is returned by PutTarget when the user already has the
// maximum number of push targets.
var ErrTooManyTargets = errors.New("too many push targets")

// Page is one page of a recipient's pending envelopes, oldest first.
type Page struct {
	Envelopes []*envelope.Envelope
	// Next is the cursor of the following page, "" when there is none.
	Next string
}

// Idempotency is the record of one send with an idempotency key: the
// answer given for the key, and a hash of the request that got it. It
// holds no payload, recipient or type: what a retry needs of the message
// it brings itself, and the hash tells whether it is the same message.
type Idempotency struct {
	Sender string
	Key    string
	// ID and CreatedAt are the answer for the key: the accepted message's
	// id and time of acceptance.
	ID        string
	CreatedAt time.Time
	// RequestHash is RequestHash of the request that reserved the key.
	RequestHash []byte
	// Published is true once the message was accepted: stored (PutNew
	// marks it in the transaction that stores the message, see
	// NewMessage.Key), or published to the bus for an ephemeral one
	// (MarkPublished).
	Published bool
}

// NewMessage is one envelope for PutNew, with the idempotency record it
// is stored under, if any.
type NewMessage struct {
	Envelope *envelope.Envelope
	// Key, when not "", is the key of the idempotency record
	// (Envelope.Sender, Key) that the put claims: Envelope is stored only
	// if the transaction that stores it also marks that record published
	// where it was not. Of several puts claiming one record, at most one
	// stores: the first to commit. A record already published, or none
	// at all (never reserved, released, or deleted by retention), stores
	// nothing.
	Key string
	// CheckTombstone also leaves Envelope unstored when its id has a
	// tombstone (see Ack), as PutMessages does. It is for an id that a
	// writer without claims (PutMessages, or a release before PutNew) may
	// have stored, and its recipient acknowledged, before: a retry of a
	// send whose record such a writer reserved. It costs a tombstone
	// lookup in the transaction that holds it; set it nowhere else.
	CheckTombstone bool
}

// RequestHash is the SHA-256 of what makes a send the same message: its
// recipient, type, ephemeral flag and payload, each field length-prefixed
// so that no two requests share an encoding.
func RequestHash(recipient, typ string, ephemeral bool, payload []byte) []byte {
	h := sha256.New()
	var n [binary.MaxVarintLen64]byte
	for _, f := range [...]string{"routing idempotency v1", recipient, typ} {
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(f)))])
		h.Write([]byte(f))
	}
	if ephemeral {
		h.Write([]byte{1})
	} else {
		h.Write([]byte{0})
	}
	h.Write(n[:binary.PutUvarint(n[:], uint64(len(payload)))])
	h.Write(payload)
	return h.Sum(nil)
}

// EnvelopeHash is RequestHash of the request that made e.
func EnvelopeHash(e *envelope.Envelope) []byte {
	return RequestHash(e.Recipient, e.Type, e.Ephemeral, e.Payload)
}

// SenderCount is what a sender has pending: stored envelopes it sent that
// are neither acknowledged nor deleted by retention, and their payload
// bytes.
type SenderCount struct {
	Messages int
	Bytes    int64
}

// Target is one push target of a user.
type Target struct {
	// Platform is "android", "ios", "apns" or "webpush".
	Platform string
	// Token is the FCM or APNs token; for webpush, the subscription endpoint.
	Token string
	// P256DH and Auth are the Web Push subscription keys (base64url).
	P256DH string
	Auth   string
}

// Messages stores pending envelopes. New messages (PutNew) are stored
// once by their nature: their ids are fresh, or claimed under an
// idempotency record. Envelopes that may arrive again after their
// recipient acknowledged them (PutMessages: routing events redelivered by
// an at-least-once bus) are checked against the ids acknowledged
// (tombstones), so that such a copy is not stored again.
//
// Each stored envelope also carries a routed mark: PutMessages and PutNew
// store it not routed, MarkRouted marks it once it was routed (delivered live or
// pushed), and Unrouted finds those that never were, so that a sweep can
// route what a lost routing event left behind.
type Messages interface {
	// PutMessages stores envelopes that may have been stored and
	// acknowledged before (from routing events, which a bus may redeliver),
	// in the order given, not routed. It is idempotent on id: an id already
	// stored is left as it is (routed mark included), and an id that its
	// recipient acknowledged (see Ack) is not stored again as long as its
	// tombstone is kept (see DeleteTombstonesBefore). An ack of an
	// envelope PutNew stored leaves no tombstone: PutMessages stores that
	// id again.
	//
	// acked reports the envelopes not stored for that reason: acked[i] is
	// true when envs[i]'s id was acknowledged before. acked is nil when no
	// envelope was (the common case), else it has len(envs). It is nil
	// whenever err is not nil.
	//
	// Safe for concurrent use; adapters may group concurrent calls into one
	// transaction.
	PutMessages(ctx context.Context, envs []*envelope.Envelope) (acked []bool, err error)
	// PutNew stores new messages: envelopes, in the order given, not
	// routed, like PutMessages, but without looking for tombstones, and an
	// Ack of one records none. The promise that makes this right is the
	// caller's: an id given to PutNew is fresh (never stored before), and
	// is never put again except by PutNew under the claim of the same
	// idempotency record (NewMessage.Key), which stores it at most once.
	// (A PutMessages of an id that PutNew stored and its recipient
	// acknowledged stores it again.) It is idempotent on id like
	// PutMessages.
	//
	// stored[i] reports whether msgs[i].Envelope is stored: always true
	// without a claim; with one, true exactly when this call took the
	// claim (the envelope is stored, by this call or, if its id was stored
	// already, before it), false when it did not: another put took it
	// (that put stored the message: nothing is left to do or to route),
	// the record was published already, or there is no record. A message
	// with CheckTombstone whose id has a tombstone is not stored either
	// (false), its claim taken all the same. stored has len(msgs); it is
	// nil when msgs is empty or err is not nil.
	//
	// Safe for concurrent use; adapters may group concurrent calls, and
	// PutMessages, Ack and MarkRouted calls, into one transaction, with
	// the effect of running them one at a time.
	PutNew(ctx context.Context, msgs []NewMessage) (stored []bool, err error)
	// MarkRouted marks the stored envelopes with these ids routed. Ids not
	// stored (never stored, or acknowledged or deleted since) are ignored.
	// It returns once the marks are committed; if ctx ends first it returns
	// ctx's error and the marks may or may not be committed.
	//
	// Safe for concurrent use; adapters may group concurrent calls, and
	// PutMessages calls, into one transaction. The order of a MarkRouted and
	// a PutMessages of the same id that run concurrently is unspecified.
	MarkRouted(ctx context.Context, ids []string) error
	// Unrouted returns up to limit stored envelopes (payload included) not
	// routed and created before before, oldest (first stored) first. It
	// returns none when limit <= 0. Envelopes stored before the store had
	// routed marks count as routed.
	Unrouted(ctx context.Context, before time.Time, limit int) ([]*envelope.Envelope, error)
	// Pending returns up to limit envelopes of recipient after cursor
	// ("" for the start), oldest (first stored) first.
	Pending(ctx context.Context, recipient, cursor string, limit int) (Page, error)
	// PendingWithin is Pending with a bound on the page's payload bytes
	// too: the page ends before the envelope that would take the sum of
	// its payload lengths past maxBytes, and Next then continues with that
	// envelope. A page holds at least one envelope whenever one is
	// pending after cursor, however large. maxBytes <= 0: no byte bound.
	// The store reads no more than the page and the envelope after it.
	PendingWithin(ctx context.Context, recipient, cursor string, limit, maxBytes int) (Page, error)
	// Stored returns those of ids that are stored: neither acknowledged
	// nor deleted by retention (routed or not), in no particular order.
	// Unknown ids are left out. It reads by id, so it is cheap for the
	// batches a caller checks.
	Stored(ctx context.Context, ids []string) ([]string, error)
	// Ack deletes the recipient's envelopes with these ids and, in the same
	// transaction, records a tombstone (id, recipient, time of the ack) for
	// each envelope it deleted that PutMessages stored (none for those
	// PutNew stored). Ids unknown or addressed to someone else are
	// ignored (no tombstone either). It returns how many were deleted. It
	// returns once the ack is committed; if ctx ends first it returns ctx's
	// error and the ack may or may not be committed.
	//
	// Safe for concurrent use; adapters may group concurrent calls, and
	// PutMessages, PutNew and MarkRouted calls, into one transaction, with
	// the effect of running the acks and puts one at a time (each call gets
	// its own count).
	Ack(ctx context.Context, recipient string, ids []string) (int, error)
	// DeleteBefore deletes envelopes created before t (retention). It
	// returns how many were deleted. It records no tombstones.
	DeleteBefore(ctx context.Context, t time.Time) (int, error)
	// DeleteTombstonesBefore deletes the tombstones of acks made before t;
	// PutMessages then stores those ids again. It returns how many were
	// deleted.
	DeleteTombstonesBefore(ctx context.Context, t time.Time) (int, error)
}

// PendingCounts reads the number of envelopes pending for a recipient.
type PendingCounts interface {
	// PendingCount returns how many envelopes are stored for recipient:
	// stored and neither acknowledged nor deleted by retention, routed or
	// not. It reads a count the store keeps in the same transactions that
	// store and delete envelopes (one row read, never a count of the
	// envelopes), so it is cheap enough for every send.
	PendingCount(ctx context.Context, recipient string) (int, error)
	// PendingTotal returns how many envelopes are stored for all
	// recipients, from the same kept counts (one row per recipient with
	// pending envelopes, never a count of the envelopes).
	PendingTotal(ctx context.Context) (int64, error)
	// SenderPending returns what sender has pending: the envelopes it sent
	// that are stored (neither acknowledged nor deleted by retention) and
	// the sum of their payload lengths. It reads counts the store keeps in
	// the same transactions that store and delete envelopes (one row read),
	// like PendingCount.
	SenderPending(ctx context.Context, sender string) (SenderCount, error)
}

// Idempotencies stores idempotency records.
type Idempotencies interface {
	// ReserveIdempotency records rec unless a record for (rec.Sender,
	// rec.Key) exists; it then returns the existing record and false.
	// It returns rec and true when rec was recorded. A record that an
	// earlier version of the store wrote with the whole envelope is
	// returned with its RequestHash computed from that envelope.
	ReserveIdempotency(ctx context.Context, rec Idempotency) (Idempotency, bool, error)
	// MarkPublished marks the record of (sender, key) published. (PutNew
	// marks the record of a stored message itself, see NewMessage.Key.)
	MarkPublished(ctx context.Context, sender, key string) error
	// ReleaseIdempotency deletes the record of (sender, key) if it is not published.
	ReleaseIdempotency(ctx context.Context, sender, key string) error
	// DeleteIdempotencyBefore deletes records of messages created before t.
	DeleteIdempotencyBefore(ctx context.Context, t time.Time) (int, error)
}

// Targets stores push targets.
type Targets interface {
	// PutTarget adds t to user's targets; an existing identical target
	// (same platform and token) is replaced. ErrTooManyTargets when the user
	// has max targets already (max <= 0: no cap).
	PutTarget(ctx context.Context, user string, t Target, max int) error
	// DeleteTarget removes user's target with t's platform and token, if any.
	DeleteTarget(ctx context.Context, user string, t Target) error
	// Targets returns user's targets.
	Targets(ctx context.Context, user string) ([]Target, error)
}

// Leases hands out named leases: among every Store on the same data (a
// PostgreSQL schema), one holds a lease at a time, so that work one
// instance must do alone (the sweep of unrouted messages) runs on one.
type Leases interface {
	// HoldLease takes the lease called name, or keeps it when this Store
	// holds it already, and reports whether this Store holds it. A lease
	// is held until ReleaseLease, the Store's Close, or the end of the
	// process or of its connection to the database: another Store's next
	// HoldLease takes it then. A Store that cannot tell (its database does
	// not answer) returns an error and must be taken not to hold it. A
	// single-process store (SQLite, whose file one Store locks) always
	// holds every lease.
	HoldLease(ctx context.Context, name string) (bool, error)
	// ReleaseLease gives up the lease called name if this Store holds it.
	ReleaseLease(ctx context.Context, name string) error
}

// Store is the whole store port.
type Store interface {
	Messages
	PendingCounts
	Idempotencies
	Targets
	Leases
	// Ping reports whether the store answers.
	Ping(ctx context.Context) error
	// Close flushes pending writes and releases resources.
	Close() error
}
