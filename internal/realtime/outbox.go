package realtime

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// sentWindow is how long after a backlog pass its messages are not sent
// again: a live copy of one is skipped, and the next pass skips them.
const sentWindow = time.Minute

// An outbox holds what one session has to write and is that session's
// send budget. It has a lock of its own, so that a delivery queues a
// frame without the session's lock, and it never calls back into the
// session. Its promises:
//
//   - Order: urgent frames (pings, pongs, error events, then the close
//     frame) are taken before anything else; then the backlog, when a
//     pass is asked for (Resync); then live frames, in the order pushed.
//   - Budget: it counts the bytes of the frames it holds, of those taken
//     and not yet released, and of the backlog page held (Hold). Push
//     and Send refuse a frame that would take the count past maxBytes,
//     and Push one past maxFrames live frames (0: no bound), with an
//     error whose text names the configuration key. Pings and the close
//     frame are counted, never refused.
//   - One writer: at most one goroutine holds the writer's role. A call
//     that returns wake=true has given the role to its caller, who must
//     start a writer; the role ends when Take returns workNone. The
//     outbox is made with the role held (for the session's start).
//   - Backlog then live: while a backlog pass runs, a live frame that
//     does not fit drops the stored live frames waiting and asks for
//     another pass (they are in the store: the pass sends them); only
//     ephemeral frames stay queued. For at least sentWindow after a pass
//     ends, a message it sent (MarkSent) is not taken live, and a pass
//     that begins then skips it (SeenRecently).
//   - Closing: after Close nothing more is queued (Push, Send, Ping and
//     Resync do nothing) and only the urgent frames, the close frame
//     last, are taken. After Drop it holds and counts nothing.
type outbox struct {
	maxBytes  int64 // 0: no bound
	maxFrames int   // live frames; 0: no bound
	// now is the clock (nil: time.Now).
	now func() time.Time

	mu sync.Mutex
	// urgent holds the frames written before the next live frames.
	urgent []urgentFrame
	// live holds live message frames; it takes memory only while it
	// holds frames.
	live []frame
	// bytes counts the frames held, those taken and not released, and
	// the backlog page held.
	bytes int64
	// writer is set while a goroutine holds the writer's role.
	writer bool
	// resync asks the writer for a backlog pass.
	resync bool
	// backlogging is set while a backlog pass runs.
	backlogging bool
	// closed is set once the close frame is queued; dropped once the
	// session has ended.
	closed, dropped bool
	// sent holds the ids of the messages the backlog sent, until
	// sentUntil (sentWindow after the last pass ended).
	sent      map[string]struct{}
	sentUntil time.Time
	// ephemeral holds the ids of the ephemeral messages queued, until
	// the client acknowledges them (at most maxEphemeralTracked; nil while
	// none is): their acks need not reach the store, which never held
	// them.
	ephemeral map[string]struct{}
}

// maxEphemeralTracked bounds the ephemeral ids an outbox remembers for
// the client's acks; past it the oldest are forgotten all at once (their
// acks then go to the store, which ignores ids it does not hold).
const maxEphemeralTracked = 1024

// urgentFrame is a frame written before the next live frames.
type urgentFrame struct {
	data []byte
	// ping is the number of the ping this frame is (0: not a ping).
	ping uint64
	// close marks the close frame; endAfter, the session ends once it
	// is written (no answer is waited for).
	close, endAfter bool
}

// budgetError is a frame refused past a session's budget; its text is the
// reason of the session's close.
type budgetError struct {
	limit int64
	what  string // "bytes" or "frames"
	key   string
}

func (e *budgetError) Error() string {
	return fmt.Sprintf("more than %d %s waiting (%s); reconnect for the rest", e.limit, e.what, e.key)
}

// work is what the writer is to do next.
type work struct {
	kind workKind
	// urgent (workUrgent) or live (workLive) are the frames to write,
	// bytes their size in the budget, released once they are written.
	urgent []urgentFrame
	live   []frame
	bytes  int64
}

type workKind uint8

const (
	workNone    workKind = iota // nothing to write: the writer's role has ended
	workUrgent                  // write the urgent frames
	workBacklog                 // run a backlog pass
	workLive                    // write the live frames
)

// newOutbox returns an empty outbox within maxBytes and maxFrames live
// frames (0: no bound), the writer's role held.
func newOutbox(maxBytes int64, maxFrames int) *outbox {
	return &outbox{maxBytes: max(maxBytes, 0), maxFrames: max(maxFrames, 0), writer: true}
}

func (o *outbox) clock() time.Time {
	if o.now != nil {
		return o.now()
	}
	return time.Now()
}

// Push queues a live message frame. It reports wake when the caller is to
// start a writer, and a *budgetError when f does not fit (f is not
// queued). A frame that a backlog pass will send, or pushed once the
// outbox is closed, is not queued and is no error.
func (o *outbox) Push(f frame) (wake bool, err error) {
	size := int64(len(f.data))
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return false, nil
	}
	if o.backlogging && !o.fitsLocked(size) {
		// A client busy with a long backlog is not slow: the stored
		// messages queued since it began are sent by another pass.
		o.live = slices.DeleteFunc(o.live, func(q frame) bool {
			if q.ephemeral {
				return false
			}
			o.bytes -= int64(len(q.data))
			return true
		})
		o.resync = true
		if !f.ephemeral {
			return false, nil
		}
	}
	if !o.fitsLocked(size) {
		return false, o.fullLocked()
	}
	o.live = append(o.live, f)
	o.bytes += size
	if f.ephemeral {
		if o.ephemeral == nil || len(o.ephemeral) >= maxEphemeralTracked {
			o.ephemeral = make(map[string]struct{})
		}
		o.ephemeral[f.id] = struct{}{}
	}
	return o.wakeLocked(), nil
}

// StoredOnly returns ids without those of the ephemeral messages this
// outbox queued (forgetting them): what an ack needs the store for. It
// reuses ids' array.
func (o *outbox) StoredOnly(ids []string) []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.ephemeral) == 0 {
		return ids
	}
	out := ids[:0]
	for _, id := range ids {
		if _, ok := o.ephemeral[id]; ok {
			delete(o.ephemeral, id)
			continue
		}
		out = append(out, id)
	}
	if len(o.ephemeral) == 0 {
		o.ephemeral = nil
	}
	return out
}

// Send queues a control frame or an error event ahead of the live frames,
// within the byte budget (see Push).
func (o *outbox) Send(data []byte) (wake bool, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return false, nil
	}
	if o.maxBytes > 0 && o.bytes+int64(len(data)) > o.maxBytes {
		return false, o.fullLocked()
	}
	return o.urgentLocked(urgentFrame{data: data}), nil
}

// Ping queues ping number seq ahead of the live frames; it is counted,
// never refused (unless the outbox is closed).
func (o *outbox) Ping(data []byte, seq uint64) (wake bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return false
	}
	return o.urgentLocked(urgentFrame{data: data, ping: seq})
}

// Close drops the live frames waiting (the stored ones are the next
// connection's backlog), queues the close frame after the urgent frames,
// and closes the outbox; endAfter goes with the frame to the writer.
func (o *outbox) Close(data []byte, endAfter bool) (wake bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return false
	}
	for _, q := range o.live {
		o.bytes -= int64(len(q.data))
	}
	o.live = nil
	o.closed = true
	return o.urgentLocked(urgentFrame{data: data, close: true, endAfter: endAfter})
}

// Drop empties and closes the outbox: it counts nothing from now on.
func (o *outbox) Drop() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed, o.dropped = true, true
	o.live, o.urgent, o.bytes = nil, nil, 0
	o.sent = nil
}

// Resync asks for a backlog pass (see Push for wake).
func (o *outbox) Resync() (wake bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return false
	}
	o.resync = true
	return o.wakeLocked()
}

// Take is the writer's: it returns what to write next (see the order
// above), live frames up to about max bytes (at least one) appended to
// reuse[:0]. Live frames a backlog pass sent are dropped, not returned.
// workNone ends the writer's role.
func (o *outbox) Take(max int64, reuse []frame) work {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case len(o.urgent) > 0:
		u, n := o.takeUrgentLocked()
		return work{kind: workUrgent, urgent: u, bytes: n}
	case o.closed:
		o.writer = false
		return work{}
	case o.resync:
		o.resync = false
		return work{kind: workBacklog}
	case len(o.live) == 0:
		o.writer = false
		o.live = nil
		if o.clock().After(o.sentUntil) {
			o.sent = nil
		}
		return work{}
	}
	n, size := 0, int64(0)
	for n < len(o.live) && (n == 0 || size+int64(len(o.live[n].data)) <= max) {
		size += int64(len(o.live[n].data))
		n++
	}
	var batch []frame
	if n == len(o.live) {
		batch, o.live = o.live, reuse[:0]
	} else {
		// The rest moves to the front: the queue keeps its room.
		batch = append(reuse[:0], o.live[:n]...)
		rest := copy(o.live, o.live[n:])
		clear(o.live[rest:])
		o.live = o.live[:rest]
	}
	if len(o.sent) > 0 {
		batch = slices.DeleteFunc(batch, func(f frame) bool {
			_, dup := o.sent[f.id]
			if dup {
				size -= int64(len(f.data))
				o.bytes -= int64(len(f.data))
			}
			return dup
		})
	}
	return work{kind: workLive, live: batch, bytes: size}
}

// TakeUrgent returns the urgent frames waiting and their size in the
// budget (released once they are written), for a writer between backlog
// writes.
func (o *outbox) TakeUrgent() ([]urgentFrame, int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.takeUrgentLocked()
}

// Hold counts n bytes of a backlog page held (released as the page is
// written or dropped).
func (o *outbox) Hold(n int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.dropped {
		o.bytes += n
	}
}

// Release takes n bytes written (or no longer held) off the count.
func (o *outbox) Release(n int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.dropped {
		o.bytes -= n
	}
}

// Room returns the bytes left in the budget, and false when there is no
// bound.
func (o *outbox) Room() (int64, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.maxBytes - o.bytes, o.maxBytes > 0
}

// BeginBacklog marks the start of a backlog pass: until EndBacklog, Push
// keeps the stored frames that do not fit for another pass. The messages
// of a pass that ended more than sentWindow ago are forgotten.
func (o *outbox) BeginBacklog() {
	now := o.clock()
	o.mu.Lock()
	defer o.mu.Unlock()
	o.backlogging = true
	if !now.Before(o.sentUntil) {
		o.sent = nil
	}
}

// EndBacklog marks the end of a backlog pass: its messages are remembered
// for sentWindow from now.
func (o *outbox) EndBacklog() {
	now := o.clock()
	o.mu.Lock()
	defer o.mu.Unlock()
	o.backlogging = false
	o.sentUntil = now.Add(sentWindow)
}

// MarkSent records that the backlog sent message id.
func (o *outbox) MarkSent(id string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.dropped {
		return
	}
	if o.sent == nil {
		o.sent = make(map[string]struct{})
	}
	o.sent[id] = struct{}{}
}

// SeenRecently reports whether a backlog pass sent message id: the one
// running, or one that ended within sentWindow before it began.
func (o *outbox) SeenRecently(id string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, ok := o.sent[id]
	return ok
}

// fitsLocked reports whether a live frame of size bytes fits.
func (o *outbox) fitsLocked(size int64) bool {
	return (o.maxFrames == 0 || len(o.live) < o.maxFrames) &&
		(o.maxBytes == 0 || o.bytes+size <= o.maxBytes)
}

// fullLocked is the error of a frame that does not fit: the frame cap
// when the live frames are at it, else the byte budget.
func (o *outbox) fullLocked() error {
	if o.maxFrames > 0 && len(o.live) >= o.maxFrames {
		return &budgetError{limit: int64(o.maxFrames), what: "frames", key: "realtime.send_queue"}
	}
	return &budgetError{limit: o.maxBytes, what: "bytes", key: "realtime.send_buffer_bytes"}
}

func (o *outbox) urgentLocked(u urgentFrame) (wake bool) {
	o.urgent = append(o.urgent, u)
	o.bytes += int64(len(u.data))
	return o.wakeLocked()
}

func (o *outbox) takeUrgentLocked() ([]urgentFrame, int64) {
	u := o.urgent
	o.urgent = nil
	var n int64
	for _, f := range u {
		n += int64(len(f.data))
	}
	return u, n
}

// wakeLocked gives the writer's role to the caller if no one holds it.
func (o *outbox) wakeLocked() bool {
	wake := !o.writer
	o.writer = true
	return wake
}
