package bus

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

// This file is the one place where message attributes are read and written
// on their way to and from a driver.

// maxAttrValue bounds an attribute value, in bytes (Pub/Sub's limit).
const maxAttrValue = 1024

// maxAttrs bounds the attributes of one message (Pub/Sub allows 100; the
// bus keeps room for its own and the drivers').
const maxAttrs = 32

// The trace context of a message travels in its attributes as W3C Trace
// Context: traceparent and tracestate.
var traceFormat propagation.TextMapPropagator = propagation.TraceContext{}

// outgoing turns m into a driver message to publish; instance is the
// delivery event's destination ("" for ingress); sc, when valid, is the
// producer span whose context the message carries. The attribute map is
// copied when the bus adds to it, so the caller's map is never changed.
func outgoing(m *Message, instance string, sc trace.SpanContext) (*driver.Message, error) {
	if m.ID == "" {
		return nil, errors.New("message has no ID")
	}
	if !validValue(m.ID) || !validValue(m.OrderingKey) {
		return nil, fmt.Errorf("message %q: id or ordering key over %d bytes, with a line break, or not UTF-8", m.ID, maxAttrValue)
	}
	if err := checkAttributes(m.Attributes); err != nil {
		return nil, fmt.Errorf("message %s: %w", m.ID, err)
	}
	attrs := m.Attributes
	if instance != "" || sc.IsValid() {
		attrs = make(map[string]string, len(m.Attributes)+3)
		maps.Copy(attrs, m.Attributes)
		if instance != "" {
			attrs[AttrInstance] = instance
		}
		if sc.IsValid() {
			writeTrace(attrs, sc)
		}
	}
	return &driver.Message{
		ID:          m.ID,
		DedupID:     m.ID,
		Data:        m.Data,
		Attributes:  attrs,
		OrderingKey: m.OrderingKey,
		Instance:    instance,
	}, nil
}

// writeTrace writes sc into attrs (traceparent, and tracestate when it has one).
func writeTrace(attrs map[string]string, sc trace.SpanContext) {
	traceFormat.Inject(trace.ContextWithSpanContext(context.Background(), sc), propagation.MapCarrier(attrs))
}

// readTrace is the trace context carried in attrs (invalid when there is
// none, or it is malformed).
func readTrace(attrs map[string]string) trace.SpanContext {
	if attrs[AttrTraceParent] == "" {
		return trace.SpanContext{}
	}
	return trace.SpanContextFromContext(traceFormat.Extract(context.Background(), propagation.MapCarrier(attrs)))
}

// incoming turns a received driver message into the handler's message.
func incoming(dm *driver.Message) *Message {
	attempt := dm.DeliveryAttempt
	if attempt < 1 {
		attempt = 1
	}
	return &Message{ID: dm.ID, Data: dm.Data, Attributes: dm.Attributes, OrderingKey: dm.OrderingKey, DeliveryAttempt: attempt}
}

func checkAttributes(attrs map[string]string) error {
	if len(attrs) > maxAttrs {
		return fmt.Errorf("%d attributes, at most %d", len(attrs), maxAttrs)
	}
	for k, v := range attrs {
		if !validAttrKey(k) {
			return fmt.Errorf("attribute key %q: want 1-64 of [A-Za-z0-9_.-] starting with a letter, not starting with nats-, routing, goog or dead_letter_, not packed", k)
		}
		if !validValue(v) {
			return fmt.Errorf("attribute %q: value over %d bytes, with a line break, or not UTF-8", k, maxAttrValue)
		}
	}
	return nil
}

func validValue(v string) bool {
	return len(v) <= maxAttrValue && !strings.ContainsAny(v, "\r\n") && utf8.ValidString(v)
}

func validAttrKey(k string) bool {
	if len(k) < 1 || len(k) > 64 {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if i == 0 && !letter {
			return false
		}
		if !letter && !(c >= '0' && c <= '9') && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	lk := strings.ToLower(k)
	for _, p := range []string{"nats-", "routing", "goog", "dead_letter_"} {
		if strings.HasPrefix(lk, p) {
			return false
		}
	}
	return lk != AttrPacked // marks the bus's own packs
}

// deadCopy is m with the dead-letter attributes added (a new map).
func deadCopy(m *driver.Message, reason string, attempts int) *driver.Message {
	c := *m
	c.Attributes = make(map[string]string, len(m.Attributes)+2)
	maps.Copy(c.Attributes, m.Attributes)
	c.Attributes[AttrDeadReason] = sanitizeReason(reason)
	c.Attributes[AttrDeadAttempts] = strconv.Itoa(attempts)
	return &c
}

// sanitizeReason makes an error text fit an attribute value.
func sanitizeReason(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
	if len(s) > maxAttrValue {
		s = s[:maxAttrValue]
		for len(s) > 0 && !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	return s
}

// toDead turns a driver's dead message into the bus's: the dead-letter
// attributes become Reason and Attempts (inferred for messages the engine
// dead-lettered by itself) and leave the attributes.
func (b *Bus) toDead(queue string, dd driver.DeadMessage) DeadMessage {
	src := dd.Message.Attributes
	reason, ok := src[AttrDeadReason]
	attempts, _ := strconv.Atoi(src[AttrDeadAttempts])
	if !ok {
		reason = reasonEngine
		attempts = dd.Attempts
		if attempts == 0 {
			attempts = b.o.MaxDeliveryAttempts
		}
	}
	var attrs map[string]string
	for k, v := range src {
		if k == AttrDeadReason || k == AttrDeadAttempts {
			continue
		}
		if attrs == nil {
			attrs = make(map[string]string, len(src))
		}
		attrs[k] = v
	}
	return DeadMessage{
		ID:    dd.ID,
		Queue: queue,
		Message: Message{
			ID:          dd.Message.ID,
			Data:        dd.Message.Data,
			Attributes:  attrs,
			OrderingKey: dd.Message.OrderingKey,
		},
		Reason:   reason,
		Attempts: attempts,
		DeadAt:   dd.DeadAt,
	}
}

// replayCopy is the message to publish again for a dead message: its
// attributes without the dead-letter ones, its ordering key, and for a
// delivery event the instance it was addressed to. A replay is never
// deduplicated against the original publish.
// When sc is valid (the replay's own producer span), the copy carries it
// instead of the original trace context.
func replayCopy(queue string, d DeadMessage, sc trace.SpanContext) (*driver.Message, error) {
	m := &driver.Message{ID: d.Message.ID, Data: d.Message.Data, Attributes: d.Message.Attributes, OrderingKey: d.Message.OrderingKey}
	if sc.IsValid() {
		m.Attributes = make(map[string]string, len(d.Message.Attributes)+2)
		maps.Copy(m.Attributes, d.Message.Attributes)
		delete(m.Attributes, AttrTraceState)
		writeTrace(m.Attributes, sc)
	}
	if queue == QueueDelivery {
		m.Instance = d.Message.Attributes[AttrInstance]
		if m.Instance == "" {
			return nil, fmt.Errorf("dead message %s has no %s attribute: cannot route it", d.ID, AttrInstance)
		}
	}
	return m, nil
}
