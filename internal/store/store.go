// Package store is the port to the durable store: pending envelopes (the
// source of truth until the recipient acknowledges them), idempotency
// records, and push targets.
//
// Adapters live in sub-packages (sqlite, postgres) and pass the conformance
// suite in storetest.
package store

import (
	"context"
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

// Idempotency is the record of one accepted send with an idempotency key.
type Idempotency struct {
	Sender string
	Key    string
	// Envelope is the message accepted for that key (payload included, so
	// that a retry can republish it if the first attempt did not finish).
	Envelope *envelope.Envelope
	// Published is true once the envelope was durably published.
	Published bool
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

// Messages stores pending envelopes, and remembers the ids their
// recipients acknowledged (tombstones) so that a copy arriving again (a
// retried send, a redelivery by an at-least-once bus) is not stored again.
//
// Each stored envelope also carries a routed mark: PutMessages stores it
// not routed, MarkRouted marks it once it was routed (delivered live or
// pushed), and Unrouted finds those that never were, so that a sweep can
// route what a lost routing event left behind.
type Messages interface {
	// PutMessages stores envelopes, in the order given, not routed. It is
	// idempotent on id: an id already stored is left as it is (routed mark
	// included), and an id that its recipient acknowledged (see Ack) is not
	// stored again as long as its tombstone is kept (see
	// DeleteTombstonesBefore).
	//
	// acked reports the envelopes not stored for that reason: acked[i] is
	// true when envs[i]'s id was acknowledged before. acked is nil when no
	// envelope was (the common case), else it has len(envs). It is nil
	// whenever err is not nil.
	//
	// Safe for concurrent use; adapters may group concurrent calls into one
	// transaction.
	PutMessages(ctx context.Context, envs []*envelope.Envelope) (acked []bool, err error)
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
	// Stored returns those of ids that are stored: neither acknowledged
	// nor deleted by retention (routed or not), in no particular order.
	// Unknown ids are left out. It reads by id, so it is cheap for the
	// batches a caller checks.
	Stored(ctx context.Context, ids []string) ([]string, error)
	// Ack deletes the recipient's envelopes with these ids and, in the same
	// transaction, records a tombstone (id, recipient, time of the ack) for
	// each envelope it deleted. Ids unknown or addressed to someone else are
	// ignored (no tombstone either). It returns how many were deleted. It
	// returns once the ack is committed; if ctx ends first it returns ctx's
	// error and the ack may or may not be committed.
	//
	// Safe for concurrent use; adapters may group concurrent calls, and
	// PutMessages and MarkRouted calls, into one transaction, with the
	// effect of running the acks and puts one at a time (each call gets its
	// own count).
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
}

// Idempotencies stores idempotency records.
type Idempotencies interface {
	// ReserveIdempotency records rec unless a record for (rec.Sender,
	// rec.Key) exists; it then returns the existing record and false.
	// It returns rec and true when rec was recorded.
	ReserveIdempotency(ctx context.Context, rec Idempotency) (Idempotency, bool, error)
	// MarkPublished marks the record of (sender, key) published.
	MarkPublished(ctx context.Context, sender, key string) error
	// ReleaseIdempotency deletes the record of (sender, key) if it is not published.
	ReleaseIdempotency(ctx context.Context, sender, key string) error
	// DeleteIdempotencyBefore deletes records of envelopes created before t.
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

// Store is the whole store port.
type Store interface {
	Messages
	PendingCounts
	Idempotencies
	Targets
	// Ping reports whether the store answers.
	Ping(ctx context.Context) error
	// Close flushes pending writes and releases resources.
	Close() error
}
