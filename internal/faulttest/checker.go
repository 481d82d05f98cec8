// Package faulttest holds what the fault tests share: a checker that sends a
// steady stream of numbered messages to one recipient, records every answer
// and every frame the recipient receives, and tells which promises held; and
// polling helpers that wait on observable state.
package faulttest

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/pkg/client"
)

// Outcome is the answer to one send.
type Outcome int

const (
	// Accepted is a 202: the message must arrive.
	Accepted Outcome = iota + 1
	// Refused is a 503, or a connection refused before the request was
	// sent: nothing was accepted, so the message must never arrive.
	Refused
	// Failed is anything else (a transport error after the request may
	// have been sent): unknown.
	Failed
)

// Checker sends a steady stream of numbered messages to one recipient and
// records every answer and every frame the recipient's live connections
// receive (acknowledging them).
type Checker struct {
	t         testing.TB
	recipient string
	// ephemeralEvery makes every nth message ephemeral (0: none).
	ephemeralEvery int

	mu       sync.Mutex
	from     *client.Client
	sent     []Outcome // by sequence number
	eph      []bool
	answered []time.Time // when each send was answered
	got      map[int]int // sequence -> frames received
	gotOn    map[int]int // sequence -> the connection (1, 2, ...) that first received it
	conns    int         // connections received from so far
	sendErrs map[string]int

	stop    chan struct{}
	stopped chan struct{}
}

// NewChecker returns a checker that sends from one client to recipient;
// every ephemeralEvery-th message is ephemeral (0: none).
func NewChecker(t testing.TB, from *client.Client, recipient string, ephemeralEvery int) *Checker {
	return &Checker{t: t, from: from, recipient: recipient, ephemeralEvery: ephemeralEvery,
		got: map[int]int{}, gotOn: map[int]int{}, sendErrs: map[string]int{}}
}

// SetSender makes later sends go through from (an instance that replaced
// the one sent to so far).
func (c *Checker) SetSender(from *client.Client) {
	c.mu.Lock()
	c.from = from
	c.mu.Unlock()
}

// Receive reads conn until it closes, acknowledging what it gets. Each call
// numbers its connection (1, 2, ...; see ReceivedOn). The returned channel
// gets the error that ended the connection.
func (c *Checker) Receive(conn *client.Conn) <-chan error {
	c.mu.Lock()
	c.conns++
	gen := c.conns
	c.mu.Unlock()
	ended := make(chan error, 1)
	go func() {
		for {
			env, err := conn.Next(context.Background())
			var ef *client.ErrorFrame
			if errors.As(err, &ef) { // an ack refused during an outage: the message stays pending
				continue
			}
			if err != nil {
				ended <- err
				return
			}
			n, err := strconv.Atoi(string(env.Payload))
			if err != nil {
				continue
			}
			c.mu.Lock()
			c.got[n]++
			if _, ok := c.gotOn[n]; !ok {
				c.gotOn[n] = gen
			}
			c.mu.Unlock()
			if !env.Ephemeral {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_ = conn.Ack(ctx, env.ID)
				cancel()
			}
		}
	}()
	return ended
}

// FetchAll fetches the recipient's pending messages through from (a client
// of the recipient), records them as received (on connection 0) and
// acknowledges them.
func (c *Checker) FetchAll(ctx context.Context, from *client.Client) error {
	for {
		p, err := from.Fetch(ctx, "", 500)
		if err != nil {
			return err
		}
		if len(p.Messages) == 0 {
			return nil
		}
		ids := make([]string, 0, len(p.Messages))
		c.mu.Lock()
		for _, env := range p.Messages {
			ids = append(ids, env.ID)
			if n, err := strconv.Atoi(string(env.Payload)); err == nil {
				c.got[n]++
				if _, ok := c.gotOn[n]; !ok {
					c.gotOn[n] = 0
				}
			}
		}
		c.mu.Unlock()
		if err := from.Ack(ctx, ids...); err != nil {
			return err
		}
	}
}

// Start sends one message every interval until StopSending.
func (c *Checker) Start(interval time.Duration) {
	c.stop, c.stopped = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(c.stopped)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-c.stop:
				return
			case <-tick.C:
			}
			c.SendOne()
		}
	}()
}

// SendOne sends the next message and records its outcome.
func (c *Checker) SendOne() {
	c.mu.Lock()
	n := len(c.sent)
	eph := c.ephemeralEvery > 0 && n%c.ephemeralEvery == 0
	c.sent = append(c.sent, 0)
	c.eph = append(c.eph, eph)
	c.answered = append(c.answered, time.Time{})
	from := c.from
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_, err := from.Send(ctx, client.Message{Recipient: c.recipient, Payload: []byte(strconv.Itoa(n)), Ephemeral: eph})
	cancel()
	o := Accepted
	var ae *client.Error
	switch {
	case err == nil:
	case errors.As(err, &ae) && ae.Status == http.StatusServiceUnavailable:
		o = Refused
	case errors.Is(err, syscall.ECONNREFUSED): // refused at dial: nothing was sent
		o = Refused
	default:
		o = Failed
	}
	c.mu.Lock()
	c.sent[n] = o
	c.answered[n] = time.Now()
	if err != nil {
		c.sendErrs[err.Error()]++
	}
	c.mu.Unlock()
}

// StopSending stops the stream Start began and waits for its last send.
func (c *Checker) StopSending() {
	close(c.stop)
	<-c.stopped
}

// Sent is how many messages were sent so far (whatever their outcome).
func (c *Checker) Sent() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.sent)
}

// Count returns how many sends had outcome o (ephemeral or not, as asked;
// nil: both).
func (c *Checker) Count(o Outcome, ephemeral *bool) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for i, s := range c.sent {
		if s == o && (ephemeral == nil || c.eph[i] == *ephemeral) {
			n++
		}
	}
	return n
}

// Received reports whether message n arrived.
func (c *Checker) Received(n int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.got[n] > 0
}

// ReceivedOn returns the connection (numbered by Receive) that first
// received message n: 0 when it was fetched, -1 when it did not arrive.
func (c *Checker) ReceivedOn(n int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if on, ok := c.gotOn[n]; ok {
		return on
	}
	return -1
}

// Outcome returns the outcome of message n (0 while it is being sent).
func (c *Checker) Outcome(n int) Outcome {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sent[n]
}

// AnsweredBetween is how many sends had outcome o, answered at or after
// from and before to.
func (c *Checker) AnsweredBetween(o Outcome, from, to time.Time) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for i, s := range c.sent {
		if s == o && !c.answered[i].Before(from) && c.answered[i].Before(to) {
			n++
		}
	}
	return n
}

// Missing returns the accepted stored messages numbered below n that have
// not arrived.
func (c *Checker) Missing(n int) []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []int
	for i, s := range c.sent[:min(n, len(c.sent))] {
		if s == Accepted && !c.eph[i] && c.got[i] == 0 {
			out = append(out, i)
		}
	}
	return out
}

// AllStoredArrived reports whether every accepted stored message arrived.
func (c *Checker) AllStoredArrived() bool {
	c.mu.Lock()
	n := len(c.sent)
	c.mu.Unlock()
	return len(c.Missing(n)) == 0
}

// LastAccepted is the sequence number of the last accepted message,
// ephemeral or not as asked (nil: either); -1 when there is none.
func (c *Checker) LastAccepted(ephemeral *bool) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.sent) - 1; i >= 0; i-- {
		if c.sent[i] == Accepted && (ephemeral == nil || c.eph[i] == *ephemeral) {
			return i
		}
	}
	return -1
}

// Check fails the test for any refused message that was delivered and any
// accepted stored message that did not arrive, and logs the counts.
func (c *Checker) Check() {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	var acc, ref, unknown, refusedDelivered, missing int
	for i, s := range c.sent {
		switch s {
		case Accepted:
			acc++
			if !c.eph[i] && c.got[i] == 0 {
				missing++
			}
		case Refused:
			ref++
			if c.got[i] > 0 {
				refusedDelivered++
				c.t.Errorf("%s: message %d (ephemeral %v) was refused but delivered", c.recipient, i, c.eph[i])
			}
		default:
			unknown++
		}
	}
	if missing > 0 {
		var which []int
		for i, s := range c.sent {
			if s == Accepted && !c.eph[i] && c.got[i] == 0 {
				which = append(which, i)
			}
		}
		c.t.Errorf("%s: %d accepted stored messages never arrived: %v", c.recipient, missing, which)
	}
	c.t.Logf("%s: sent %d: %d accepted, %d refused (%d of them delivered), %d failed otherwise %v",
		c.recipient, len(c.sent), acc, ref, refusedDelivered, unknown, c.sendErrs)
}

// Ptr returns a pointer to v.
func Ptr[T any](v T) *T { return &v }

// WaitFor polls cond until it holds, and fails the test when d passes first.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitForOr polls cond until it holds or d passes (the caller checks).
func WaitForOr(d time.Duration, cond func() bool) {
	deadline := time.Now().Add(d)
	for !cond() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}
