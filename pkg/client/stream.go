package client

import (
	"context"
	cryptorand "crypto/rand"
	"encoding/base64"
	"errors"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// ErrTokenExpired is returned by Stream.Next when the session ended
// because its token expired and the Client has no RenewToken.
var ErrTokenExpired = errors.New("routing service: token expired")

// StreamOptions tune a Stream. The zero value is usable.
type StreamOptions struct {
	// AutoAck acknowledges each message as Next returns it, and again any
	// later copy of it (the first ack may have been lost with a connection).
	// Without it the caller acknowledges with Stream.Ack.
	AutoAck bool
	// MinBackoff and MaxBackoff bound the wait before a reconnect: a
	// random duration up to MinBackoff doubled per failed attempt, capped
	// at MaxBackoff (full jitter). Defaults 200ms and 30s.
	MinBackoff, MaxBackoff time.Duration
	// Remember is how many recent message ids are kept to drop repeats
	// (default 10,000).
	Remember int
	// OnState, when set, is called from Next when a connection opens
	// (err nil) and when one ends (err says why).
	OnState func(connected bool, err error)
	// RetryUnanswered has Send give a message without an IdempotencyKey a
	// random one, and send a message again, once, when its connection
	// ended before the service answered (ErrUnanswered): over the
	// connection Next has opened since, or over HTTP. The key makes the
	// second sending return the first one's answer if it was accepted,
	// without a second copy.
	RetryUnanswered bool
}

// Stream receives the caller's messages over WebSocket for as long
// as the caller wants them: it reconnects after a dropped connection with
// backoff and jitter, renews the token through Client.RenewToken when the
// session ends with "token expired", and drops repeats of messages it has
// already returned (delivery is at-least-once). Next is called from one
// goroutine; Ack and Close may be called from any.
type Stream struct {
	c    *Client
	opts StreamOptions

	mu     sync.Mutex
	conn   *Conn // nil while disconnected
	closed bool

	attempt int // failed connection attempts since the last message
	seen    idSet
}

// Stream returns a stream; it connects on the first Next.
func (c *Client) Stream(opts StreamOptions) *Stream {
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 200 * time.Millisecond
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = max(30*time.Second, opts.MinBackoff)
	}
	if opts.Remember <= 0 {
		opts.Remember = 10000
	}
	return &Stream{c: c, opts: opts, seen: newIDSet(opts.Remember)}
}

// Next returns the next message not returned before: the backlog first,
// then live messages, across reconnects. It returns an error only when ctx
// ends, the stream is closed, or the service refuses the
// stream for good (a *Error with status 400, 401, 403 or 404, or
// ErrTokenExpired without RenewToken).
func (s *Stream) Next(ctx context.Context) (Envelope, error) {
	for {
		conn, err := s.connection(ctx)
		if err != nil {
			return Envelope{}, err
		}
		env, err := conn.Next(ctx)
		if err != nil {
			var ef *ErrorFrame
			if errors.As(err, &ef) {
				continue // the server closes the connection after it, if it must
			}
			if ctx.Err() != nil {
				return Envelope{}, ctx.Err()
			}
			s.dropConn(conn, err)
			if isTokenExpired(err) {
				if ok, rerr := s.c.renew(ctx); rerr != nil {
					return Envelope{}, rerr
				} else if !ok {
					return Envelope{}, ErrTokenExpired
				}
			}
			continue
		}
		s.attempt = 0
		if s.seen.has(env.ID) {
			if s.opts.AutoAck {
				_ = conn.Ack(ctx, env.ID)
			}
			continue
		}
		s.seen.add(env.ID)
		if s.opts.AutoAck {
			// A lost ack is harmless: the message comes again and is acked then.
			_ = conn.Ack(ctx, env.ID)
		}
		return env, nil
	}
}

// Ack acknowledges messages: over the open connection, or over HTTP while
// there is none.
func (s *Stream) Ack(ctx context.Context, ids ...string) error {
	s.mu.Lock()
	conn := s.conn
	s.mu.Unlock()
	if conn != nil {
		if err := conn.Ack(ctx, ids...); err == nil {
			return nil
		}
	}
	return s.c.Ack(ctx, ids...)
}

// Send sends m: over the stream's connection while one is open (its
// answer is read by Next, which must be running, as a receiving client's
// loop does), else over HTTP (Client.Send). The service answers as POST
// /v1/messages does; a send whose connection ended before its answer
// returns an error wrapping ErrUnanswered, unless
// StreamOptions.RetryUnanswered sends it again (with the same key).
func (s *Stream) Send(ctx context.Context, m Message) (Accepted, error) {
	if s.opts.RetryUnanswered && m.IdempotencyKey == "" {
		m.IdempotencyKey = randomKey()
	}
	for retried := false; ; retried = true {
		s.mu.Lock()
		conn := s.conn
		s.mu.Unlock()
		if conn == nil {
			return s.c.Send(ctx, m)
		}
		acc, err := conn.Send(ctx, m)
		if !errors.Is(err, ErrUnanswered) || !s.opts.RetryUnanswered || retried || ctx.Err() != nil {
			return acc, err
		}
		// The connection is gone (Next drops it and reconnects): the
		// next attempt goes over HTTP, or a connection opened since.
		s.forgetConn(conn)
	}
}

// forgetConn stops using conn for sends once it has ended.
func (s *Stream) forgetConn(conn *Conn) {
	s.mu.Lock()
	if s.conn == conn {
		s.conn = nil
	}
	s.mu.Unlock()
}

// randomKey returns a random idempotency key (22 characters of
// [A-Za-z0-9_-]).
func randomKey() string {
	var b [16]byte
	_, _ = cryptorand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Close closes the connection; Next returns an error afterwards.
func (s *Stream) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.conn == nil {
		return nil
	}
	err := s.conn.Close()
	s.conn = nil
	return err
}

var errClosed = errors.New("routing service: stream closed")

// connection returns the open connection, dialling with backoff until one
// opens or the failure is permanent.
func (s *Stream) connection(ctx context.Context) (*Conn, error) {
	s.mu.Lock()
	conn, closed := s.conn, s.closed
	s.mu.Unlock()
	if closed {
		return nil, errClosed
	}
	if conn != nil {
		return conn, nil
	}
	renewed := false
	for {
		if err := s.wait(ctx); err != nil {
			return nil, err
		}
		s.attempt++
		conn, err := s.c.Connect(ctx)
		if err == nil {
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				conn.Close()
				return nil, errClosed
			}
			s.conn = conn
			s.mu.Unlock()
			if s.opts.OnState != nil {
				s.opts.OnState(true, nil)
			}
			return conn, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var e *Error
		if errors.As(err, &e) {
			switch e.Status {
			case http.StatusUnauthorized:
				if renewed || s.c.RenewToken == nil {
					return nil, err
				}
				if _, rerr := s.c.renew(ctx); rerr != nil {
					return nil, rerr
				}
				renewed = true
				continue
			case http.StatusBadRequest, http.StatusForbidden, http.StatusNotFound:
				return nil, err
			}
		}
		if s.opts.OnState != nil {
			s.opts.OnState(false, err)
		}
	}
}

// wait sleeps before a reconnect: a random duration up to MinBackoff
// doubled per failed attempt, capped at MaxBackoff. The first connection
// does not wait.
func (s *Stream) wait(ctx context.Context) error {
	if s.attempt == 0 && s.seen.len() == 0 {
		return nil
	}
	t := time.NewTimer(Backoff(s.attempt, s.opts.MinBackoff, s.opts.MaxBackoff))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Backoff returns a random wait in [0, min(max, min·2^attempt)) ("full
// jitter"), so that clients cut off together do not come back together.
func Backoff(attempt int, minWait, maxWait time.Duration) time.Duration {
	ceiling := minWait
	for i := 0; i < attempt && ceiling < maxWait; i++ {
		ceiling *= 2
	}
	ceiling = min(ceiling, maxWait)
	if ceiling <= 0 {
		return 0
	}
	return rand.N(ceiling)
}

func (s *Stream) dropConn(conn *Conn, cause error) {
	s.mu.Lock()
	if s.conn == conn {
		s.conn = nil
	}
	s.mu.Unlock()
	_ = conn.ws.CloseNow()
	if s.opts.OnState != nil {
		s.opts.OnState(false, cause)
	}
}

// isTokenExpired reports whether err is the close the server sends when a
// session's token expires: status 1008, reason "token expired".
func isTokenExpired(err error) bool {
	var ce websocket.CloseError
	return errors.As(err, &ce) && ce.Code == websocket.StatusPolicyViolation && ce.Reason == "token expired"
}

// idSet remembers the last n ids added.
type idSet struct {
	ids  map[string]struct{}
	ring []string
	next int
}

func newIDSet(n int) idSet {
	return idSet{ids: make(map[string]struct{}, n), ring: make([]string, n)}
}

func (s *idSet) has(id string) bool { _, ok := s.ids[id]; return ok }

func (s *idSet) len() int { return len(s.ids) }

func (s *idSet) add(id string) {
	if old := s.ring[s.next]; old != "" {
		delete(s.ids, old)
	}
	s.ring[s.next] = id
	s.ids[id] = struct{}{}
	s.next = (s.next + 1) % len(s.ring)
}
