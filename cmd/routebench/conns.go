package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/go-routing-service/routingservice/pkg/client"
)

// Source addresses for client connections: 127.0.0.2 .. 127.0.0.250, so that
// tens of thousands of connections to one server port do not run out of the
// ephemeral ports of a single source address.
const (
	firstSrc = 2
	numSrc   = 249
)

// maxAckIDs is the most ids one ack frame carries (the API's limit).
const maxAckIDs = 500

// srcDialer dials loopback targets from a cycling 127.0.0.x source address.
type srcDialer struct{ next atomic.Uint32 }

func (d *srcDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	nd := net.Dialer{Timeout: 10 * time.Second}
	if ip := net.ParseIP(host).To4(); ip != nil && ip[0] == 127 {
		n := d.next.Add(1)
		nd.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(firstSrc+n%numSrc))}
	}
	return nd.DialContext(ctx, network, net.JoinHostPort(host, port))
}

// wsHTTPClient is the HTTP client WebSocket handshakes go through. A
// hijacked (101) connection leaves the transport, so nothing is pooled.
func wsHTTPClient() *http.Client {
	d := &srcDialer{}
	return &http.Client{Transport: &http.Transport{
		DialContext:         d.DialContext,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     10 * time.Second,
		// The handshake is all the transport reads and writes; after it
		// its read buffer stays under the WebSocket's own (4 KiB each way).
		ReadBufferSize:  512,
		WriteBufferSize: 2048,
	}}
}

// rconn is one receiving WebSocket: the slot-th connection of a recipient.
// It holds a pkg/client Conn (one coder/websocket connection, one reading
// goroutine) and at most maxAckIDs ids waiting to be acked.
type rconn struct {
	conn      *client.Conn
	recipient int32
	slot      uint8

	mu      sync.Mutex
	pending []string
}

// receivers is the set of connections of one run and what they share.
type receivers struct {
	ck      *checker
	wsErrs  *statusCounts
	closing atomic.Bool
	dropped atomic.Int64
	open    atomic.Int64
	conns   []*rconn

	dirtyMu sync.Mutex
	// flushMu makes the final flush wait for one the ack loop has begun.
	flushMu sync.Mutex
	dirty   []*rconn

	wg sync.WaitGroup
}

// openAll opens conns connections for each of the tokens (one per
// recipient), with parallel dials in flight, and starts reading them.
func (rs *receivers) openAll(ctx context.Context, hc *http.Client, wsURL string, tokens []string, conns, parallel int, readCtx context.Context) error {
	type job struct{ r, slot int }
	jobs := make(chan job)
	rs.conns = make([]*rconn, len(tokens)*conns)
	var failed atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
				c, err := (&client.Client{WSURL: wsURL, Token: tokens[j.r], HTTP: hc}).Connect(dctx)
				cancel()
				if err != nil {
					failed.Add(1)
					errOnce.Do(func() { firstErr = err })
					continue
				}
				rc := &rconn{conn: c, recipient: int32(j.r), slot: uint8(j.slot)}
				rs.conns[j.r*conns+j.slot] = rc
				rs.open.Add(1)
				rs.wg.Add(1)
				go rs.read(readCtx, rc)
			}
		}()
	}
	// Slot-major order: a recipient's connections are not opened back to back.
	for slot := 0; slot < conns && ctx.Err() == nil && failed.Load() == 0; slot++ {
		for r := 0; r < len(tokens) && failed.Load() == 0; r++ {
			select {
			case jobs <- job{r, slot}:
			case <-ctx.Done():
			}
		}
	}
	close(jobs)
	wg.Wait()
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d WebSocket connections failed (%d open): %w", n, rs.open.Load(), firstErr)
	}
	return ctx.Err()
}

// read receives until the connection ends: each message is checked and
// queued for an ack.
func (rs *receivers) read(ctx context.Context, rc *rconn) {
	defer rs.wg.Done()
	defer rs.open.Add(-1)
	for {
		env, err := rc.conn.Next(ctx)
		if err != nil {
			var ef *client.ErrorFrame
			if errors.As(err, &ef) {
				rs.wsErrs.Add(ef.Code)
				continue
			}
			if !rs.closing.Load() {
				rs.dropped.Add(1)
				rs.wsErrs.Add(closeReason(err))
			}
			return
		}
		lat := time.Duration(-1)
		if len(env.Payload) >= 8 {
			lat = time.Duration(time.Now().UnixNano() - int64(binary.BigEndian.Uint64(env.Payload)))
		}
		// Queued before it counts as received: once every message is
		// received, every ack is queued for closeAll's last flush.
		rs.queueAck(ctx, rc, env.ID)
		rs.ck.Received(env.ID, int(rc.recipient), int(rc.slot), lat)
	}
}

func closeReason(err error) string {
	if st := websocket.CloseStatus(err); st != -1 {
		return fmt.Sprintf("closed by server: %d", int(st))
	}
	return "read failed"
}

func (rs *receivers) queueAck(ctx context.Context, rc *rconn, id string) {
	rc.mu.Lock()
	rc.pending = append(rc.pending, id)
	n := len(rc.pending)
	rc.mu.Unlock()
	switch {
	case n >= maxAckIDs:
		rs.flush(ctx, rc)
	case n == 1:
		rs.dirtyMu.Lock()
		rs.dirty = append(rs.dirty, rc)
		rs.dirtyMu.Unlock()
	}
}

func (rs *receivers) flush(ctx context.Context, rc *rconn) {
	rc.mu.Lock()
	ids := rc.pending
	rc.pending = nil
	rc.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	// Not cancelled with ctx: a WebSocket write whose context ends closes
	// the connection, and the ack loop's context ends while it may write.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	if err := rc.conn.Ack(actx, ids...); err != nil && !rs.closing.Load() {
		rs.wsErrs.Add("ack write failed")
	}
	cancel()
}

// ackLoop acks what the connections received, every 20 ms, until ctx is done.
func (rs *receivers) ackLoop(ctx context.Context) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rs.flushDirty(ctx)
	}
}

func (rs *receivers) flushDirty(ctx context.Context) {
	rs.flushMu.Lock()
	defer rs.flushMu.Unlock()
	rs.dirtyMu.Lock()
	d := rs.dirty
	rs.dirty = nil
	rs.dirtyMu.Unlock()
	for _, rc := range d {
		rs.flush(ctx, rc)
	}
}

// closeAll acks what is left, closes every connection (normal closure, 64
// at a time) and waits for the readers, at most 10 s; then stop ends the
// readers that are left.
func (rs *receivers) closeAll(stop context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rs.flushDirty(ctx)
	rs.closing.Store(true)
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for _, rc := range rs.conns {
		if rc == nil {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			_ = rc.conn.Close()
		}()
	}
	wg.Wait()
	done := make(chan struct{})
	go func() { rs.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	stop()
	<-done
}
