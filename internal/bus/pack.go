package bus

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// Packed deliveries. With Options.PackDeliveries, PublishDeliveries sends
// the delivery events of one call that go to one instance as a single
// engine message (a pack), and the receiver unpacks it and hands each event
// to the handler as if it had been published alone: same ID, body,
// attributes (trace context included), ordering key and delivery attempt.
// One engine write, one engine delivery and one ack then serve many
// events.
//
// Order: the packs of one bus carry one ordering key (packKey), so that the
// engine keeps them in publish order and a receiver handles them one at a
// time; the events of a pack are handled in pack order. So the events of
// one ordering key published through one bus keep their order, as
// unpacked ones do.
//
// Settling: each event is settled as usual (ack, retry, dead-letter) and
// the pack is settled once all its events are: acked, or released for
// redelivery after the longest delay asked for when any event was. A
// redelivered pack hands its events over again, those handled before
// included (delivery is at-least-once). An event dead-lettered on its own
// goes to the dead-letter queue alone; a pack that cannot be decoded goes
// there whole.

// AttrPacked marks a pack; its value is the number of events in it.
const AttrPacked = "packed"

// packVersion is the first byte of a pack's body.
const packVersion = 1

// maxPackBytes bounds a pack's body: packs stay well under NATS's default
// message limit (1 MiB) and Pub/Sub's (10 MB). An event larger than that
// goes in a pack of its own.
const maxPackBytes = 512 << 10

// maxPackEvents bounds the events of one pack, on both sides.
const maxPackEvents = 4096

// newPackKey returns the ordering key of this bus's packs.
func newPackKey() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "pack-" + hex.EncodeToString(b[:])
}

// packs groups ms (delivery events, each with its Instance) into packs, one
// or more per instance, in the order of ms within each instance.
func (b *Bus) packs(ms []*driver.Message) []*driver.Message {
	var out []*driver.Message
	byInstance := map[string][]*driver.Message{}
	var order []string
	for _, m := range ms {
		if _, ok := byInstance[m.Instance]; !ok {
			order = append(order, m.Instance)
		}
		byInstance[m.Instance] = append(byInstance[m.Instance], m)
	}
	for _, inst := range order {
		group := byInstance[inst]
		for len(group) > 0 {
			n, size := 0, 0
			for n < len(group) && n < maxPackEvents {
				s := packedSize(group[n])
				if n > 0 && size+s > maxPackBytes {
					break
				}
				size += s
				n++
			}
			out = append(out, b.pack(inst, group[:n], size))
			group = group[n:]
		}
	}
	return out
}

// pack encodes ms, all addressed to inst, as one message.
func (b *Bus) pack(inst string, ms []*driver.Message, size int) *driver.Message {
	body := make([]byte, 0, size+1+binary.MaxVarintLen64)
	body = append(body, packVersion)
	body = binary.AppendUvarint(body, uint64(len(ms)))
	for _, m := range ms {
		body = appendString(body, m.ID)
		body = appendString(body, m.OrderingKey)
		body = binary.AppendUvarint(body, uint64(len(m.Attributes)))
		for k, v := range m.Attributes {
			body = appendString(body, k)
			body = appendString(body, v)
		}
		body = appendString(body, string(m.Data))
	}
	id := b.packKey + "." + strconv.FormatUint(b.packSeq.Add(1), 10)
	return &driver.Message{
		ID:          id,
		Data:        body,
		Attributes:  map[string]string{AttrInstance: inst, AttrPacked: strconv.Itoa(len(ms))},
		OrderingKey: b.packKey,
		Instance:    inst,
	}
}

// packedSize is an upper bound of m's encoding in a pack.
func packedSize(m *driver.Message) int {
	n := 3*binary.MaxVarintLen64 + len(m.ID) + len(m.OrderingKey) + len(m.Data)
	for k, v := range m.Attributes {
		n += 2*binary.MaxVarintLen64 + len(k) + len(v)
	}
	return n
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// errPack is the error of a pack that cannot be decoded.
var errPack = errors.New("malformed pack")

// unpack decodes the events of the pack p. Each event gets p's instance and
// delivery attempt; its Acker is left nil.
func unpack(p *driver.Message) ([]*driver.Message, error) {
	body := p.Data
	if len(body) == 0 || body[0] != packVersion {
		return nil, fmt.Errorf("%w: unknown version", errPack)
	}
	r := packReader{b: body[1:]}
	n := r.uvarint()
	if r.err == nil && (n == 0 || n > maxPackEvents) {
		return nil, fmt.Errorf("%w: %d events", errPack, n)
	}
	ms := make([]*driver.Message, 0, min(n, 64))
	for i := uint64(0); i < n && r.err == nil; i++ {
		m := &driver.Message{Instance: p.Instance, DeliveryAttempt: p.DeliveryAttempt}
		m.ID = r.string()
		m.OrderingKey = r.string()
		na := r.uvarint()
		if na > maxAttrs {
			return nil, fmt.Errorf("%w: event %d has %d attributes", errPack, i, na)
		}
		if na > 0 {
			m.Attributes = make(map[string]string, na)
			for range na {
				k := r.string()
				m.Attributes[k] = r.string()
			}
		}
		m.Data = r.bytes()
		if r.err == nil && m.ID == "" {
			return nil, fmt.Errorf("%w: event %d has no id", errPack, i)
		}
		ms = append(ms, m)
	}
	if r.err != nil {
		return nil, r.err
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the last event", errPack, len(r.b))
	}
	return ms, nil
}

// packReader reads a pack's fields; the first error sticks.
type packReader struct {
	b   []byte
	err error
}

func (r *packReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = fmt.Errorf("%w: truncated", errPack)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *packReader) string() string { return string(r.bytes()) }

// bytes returns the next length-prefixed field, sharing the pack's body.
func (r *packReader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.err = fmt.Errorf("%w: truncated", errPack)
		return nil
	}
	b := r.b[:n:n]
	r.b = r.b[n:]
	return b
}

// isPack reports whether a received message is a pack.
func isPack(dm *driver.Message) bool { return dm.Attributes[AttrPacked] != "" }

// runPack hands the events of the pack r to h, in order, each settled on
// its own (see run), then settles the pack.
func (b *Bus) runPack(ctx context.Context, queue string, maxBatch int, h BatchHandler, r received, g *gate) {
	events, err := unpack(r.dm)
	if err != nil {
		b.settle(ctx, queue, r, fmt.Errorf("%w: %v", ErrPermanent, err))
		return
	}
	pa := &packAcker{pack: r.dm.Acker}
	items := make([]received, len(events))
	for i, dm := range events {
		dm.Acker = &packMember{p: pa}
		dm.Pack, dm.PackIndex = r.dm.Acker, i
		items[i] = received{dm: dm, m: incoming(dm)}
	}
	for start := 0; start < len(items); start += maxBatch {
		b.run(ctx, queue, h, items[start:min(start+maxBatch, len(items))], g)
	}
	if err := pa.settle(); err != nil {
		b.log.Warn("settling a pack failed; it will be redelivered", "queue", queue, "id", r.m.ID, "err", err)
	}
}

// packAcker collects the settling of a pack's events.
type packAcker struct {
	pack driver.Acker

	mu     sync.Mutex
	nacked bool
	delay  time.Duration
}

// settle acks the pack, or releases it for redelivery when an event was.
func (a *packAcker) settle() error {
	a.mu.Lock()
	nacked, delay := a.nacked, a.delay
	a.mu.Unlock()
	if nacked {
		return a.pack.Nack(delay)
	}
	return a.pack.Ack()
}

// packMember is the Acker of one event of a pack.
type packMember struct {
	p *packAcker
}

func (m *packMember) Ack() error { return nil }

func (m *packMember) Nack(delay time.Duration) error {
	m.p.mu.Lock()
	defer m.p.mu.Unlock()
	m.p.nacked = true
	m.p.delay = max(m.p.delay, delay)
	return nil
}

// Extend extends the pack (the bus calls it only where the engine needs
// it: Capabilities.Extend).
func (m *packMember) Extend() error { return m.p.pack.Extend() }
