package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-routing-service/routingservice/pkg/client"
)

// The ways of sending besides one HTTP request per message (load.run):
//
//	-send ws       each sender holds a WebSocket and pipelines its sends,
//	               -inflight of them unanswered at a time (a chat app's way)
//	group -size N  each send is one POST /v1/messages/batch of N messages to
//	               N recipients (a group message fanned out to its members'
//	               devices); its send latency is the batch's

// runLoad runs l the scenario's way and returns how long it sent.
func (e *env) runLoad(ctx context.Context, l *load) (time.Duration, error) {
	switch {
	case e.o.scenario == "group":
		return l.runBatches(ctx, e.o.size), nil
	case e.o.send == "ws":
		return l.runWS(ctx, e.o.inflight)
	}
	return l.run(ctx), nil
}

// schedule paces one of workers sending goroutines, each send n messages,
// at l.rate messages per second in total (none: flat out), each starting
// at its place in the first interval.
type schedule struct {
	interval time.Duration
	next     time.Time
}

func (l *load) schedule(start time.Time, worker, workers, n int) *schedule {
	var interval time.Duration
	if l.rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(workers*n) / l.rate)
	}
	return &schedule{interval: interval, next: start.Add(interval * time.Duration(worker) / time.Duration(workers))}
}

// wait waits for the worker's next turn.
func (s *schedule) wait() {
	if s.interval <= 0 {
		return
	}
	s.next = s.next.Add(s.interval)
	if d := time.Until(s.next); d > 0 {
		time.Sleep(d)
	}
}

// more reports whether the phase goes on, and takes the number of the
// next message (count n of a batch: the first of n numbers).
func (l *load) more(seq *atomic.Int64, n int) (int64, bool) {
	if !l.until.IsZero() && !time.Now().Before(l.until) {
		return 0, false
	}
	first := seq.Add(int64(n)) - int64(n) + 1
	if l.count > 0 && first > l.count {
		return 0, false
	}
	return first, true
}

// drive runs workers sending goroutines, each paced by l.schedule, until
// the deadline or count or until ctx ends, and returns how long they sent.
// Goroutine w makes its sender with worker(w) first, then calls it with
// the number of each next message (n messages a call, numbered from 1 in
// the order more takes them): it sends them and records their outcome.
func (l *load) drive(ctx context.Context, workers, n int, worker func(w int) func(first int64)) time.Duration {
	var seq atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			send := worker(w)
			sched := l.schedule(start, w, workers, n)
			for ctx.Err() == nil {
				sched.wait()
				first, ok := l.more(&seq, n)
				if !ok {
					return
				}
				send(first)
			}
		})
	}
	wg.Wait()
	return time.Since(start)
}

// sendOne sends message n (numbered from 1) to its target with send, its
// payload buf stamped with the time it is sent, and records the outcome.
func (l *load) sendOne(ctx context.Context, send func(context.Context, client.Message) (client.Accepted, error), buf []byte, n int64) {
	r := l.targets[int(n-1)%len(l.targets)]
	t0 := time.Now()
	binary.BigEndian.PutUint64(buf, uint64(t0.UnixNano()))
	a, err := send(ctx, client.Message{Recipient: l.names[r], Payload: buf, Ephemeral: l.ephemeral})
	l.offered.Add(1)
	if err != nil {
		l.errs.AddStatus(statusOf(err))
		return
	}
	l.sendLat.Add(time.Since(t0))
	l.ck.Accepted(a.ID, r)
}

// runWS sends over one WebSocket per sender, inflight sends unanswered at a
// time on each (inflight goroutines sharing the connection, and one that
// reads its answers), until the deadline or count.
func (l *load) runWS(ctx context.Context, inflight int) (time.Duration, error) {
	conns := make([]*client.Conn, len(l.senders))
	for i, c := range l.senders {
		conn, err := c.Connect(ctx)
		if err != nil {
			for _, open := range conns[:i] {
				open.Close()
			}
			return 0, fmt.Errorf("sender WebSocket: %w", err)
		}
		conns[i] = conn
	}
	readCtx, stopRead := context.WithCancel(context.Background())
	var readers sync.WaitGroup
	for _, conn := range conns {
		readers.Go(func() {
			for { // the answers are read here; the senders hold no messages
				if _, err := conn.Next(readCtx); err != nil && readCtx.Err() != nil {
					return
				} else if err != nil && !isErrorFrame(err) {
					return
				}
			}
		})
	}
	defer func() {
		stopRead()
		for _, conn := range conns {
			conn.Close()
		}
		readers.Wait()
	}()

	workers := len(conns) * inflight
	return l.drive(ctx, workers, 1, func(w int) func(int64) {
		send, buf := conns[w%len(conns)].Send, make([]byte, l.payload)
		return func(n int64) { l.sendOne(ctx, send, buf, n) }
	}), nil
}

// isErrorFrame reports whether err is an error event of the server (the
// connection goes on).
func isErrorFrame(err error) bool {
	_, ok := err.(*client.ErrorFrame)
	return ok
}

// runBatches sends batches of size messages, each to size recipients in
// turn, one batch per request per sender, until the deadline or count;
// send latency is each batch's.
func (l *load) runBatches(ctx context.Context, size int) time.Duration {
	return l.drive(ctx, len(l.senders), size, func(s int) func(int64) {
		c := l.senders[s]
		buf := make([]byte, l.payload)
		msgs := make([]client.Message, size)
		rs := make([]int, size)
		return func(first int64) {
			t0 := time.Now()
			binary.BigEndian.PutUint64(buf, uint64(t0.UnixNano()))
			for i := range msgs {
				rs[i] = l.targets[int(first-1+int64(i))%len(l.targets)]
				msgs[i] = client.Message{Recipient: l.names[rs[i]], Payload: buf}
			}
			accs, err := c.SendBatch(ctx, msgs)
			l.offered.Add(int64(size))
			if err != nil {
				for range size {
					l.errs.AddStatus(statusOf(err))
				}
				return
			}
			l.sendLat.Add(time.Since(t0))
			for i, a := range accs {
				l.ck.Accepted(a.ID, rs[i])
			}
		}
	})
}
