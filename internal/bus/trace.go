package bus

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Span attributes of the bus. Message ids are recorded; bodies, ordering
// keys (the recipient) and other attributes never are.
const (
	attrSystem      = attribute.Key("messaging.system")
	attrOpType      = attribute.Key("messaging.operation.type")
	attrOpName      = attribute.Key("messaging.operation.name")
	attrDestination = attribute.Key("messaging.destination.name")
	attrMessageID   = attribute.Key("messaging.message.id")
	attrBatchCount  = attribute.Key("messaging.batch.message_count")
	attrInstance    = attribute.Key("routing.instance")
	attrAttempt     = attribute.Key("routing.attempt")
	attrOutcome     = attribute.Key("routing.outcome")
)

// Outcomes of a received message, on its processing span.
const (
	outcomeAck      = "ack"
	outcomeRetry    = "retry"
	outcomeReleased = "released"
	outcomeDead     = "dead_lettered"
	outcomeHeld     = "held" // a backend is down: kept unsettled and handled again
)

func newTracer(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		return nil
	}
	if _, ok := tp.(noop.TracerProvider); ok {
		return nil
	}
	return tp.Tracer("github.com/go-routing-service/routingservice/internal/bus")
}

func spanContext(s trace.Span) trace.SpanContext {
	if s == nil {
		return trace.SpanContext{}
	}
	return s.SpanContext()
}

// parentOf is the context a span about m starts in: m.Trace when valid,
// else ctx's span.
func parentOf(ctx context.Context, m *Message) context.Context {
	if m.Trace.IsValid() {
		return trace.ContextWithSpanContext(ctx, m.Trace)
	}
	return ctx
}

// startProducer starts the PRODUCER span of publishing m on queue
// ("send ingress", "send delivery").
func (b *Bus) startProducer(ctx context.Context, queue, instance string, m *Message) trace.Span {
	_, span := b.tracer.Start(parentOf(ctx, m), "send "+queue, trace.WithSpanKind(trace.SpanKindProducer))
	if span.IsRecording() {
		span.SetAttributes(b.messageAttrs("send", "publish", queue, m.ID)...)
		if instance != "" {
			span.SetAttributes(attrInstance.String(instance))
		}
	}
	return span
}

// startProcess starts the CONSUMER span of handling a received message,
// a child of the producer span whose context the message carries ("process
// ingress", "process delivery").
func (b *Bus) startProcess(ctx context.Context, queue string, r received) trace.Span {
	parent := ctx
	if sc := readTrace(r.dm.Attributes); sc.IsValid() {
		parent = trace.ContextWithRemoteSpanContext(ctx, sc)
	}
	_, span := b.tracer.Start(parent, "process "+queue, trace.WithSpanKind(trace.SpanKindConsumer))
	if span.IsRecording() {
		span.SetAttributes(b.messageAttrs("process", "process", queue, r.m.ID)...)
		span.SetAttributes(attrAttempt.Int(r.m.DeliveryAttempt))
		if r.dm.Instance != "" {
			span.SetAttributes(attrInstance.String(r.dm.Instance))
		}
	}
	return span
}

// startDeadLetter starts the PRODUCER span of copying a message to queue's
// dead-letter queue, a child of its processing span.
func (b *Bus) startDeadLetter(ctx context.Context, queue string, m *Message, reason string) trace.Span {
	_, span := b.tracer.Start(parentOf(ctx, m), "dead-letter "+queue, trace.WithSpanKind(trace.SpanKindProducer))
	if span.IsRecording() {
		span.SetAttributes(b.messageAttrs("send", "dead_letter", queue+"-dlq", m.ID)...)
		span.SetAttributes(attrAttempt.Int(m.DeliveryAttempt), attribute.String("routing.dead_letter.reason", reason))
	}
	return span
}

// startReplay starts the PRODUCER span of publishing dead message d back
// on queue: a new trace (the operator's), linked to the message's original
// trace.
func (b *Bus) startReplay(ctx context.Context, queue string, d DeadMessage) trace.Span {
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer)}
	if sc := readTrace(d.Message.Attributes); sc.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
	}
	_, span := b.tracer.Start(ctx, "replay "+queue, opts...)
	if span.IsRecording() {
		span.SetAttributes(b.messageAttrs("send", "replay", queue, d.Message.ID)...)
		span.SetAttributes(attribute.String("routing.dead_letter.id", d.ID), attrAttempt.Int(d.Attempts))
	}
	return span
}

func (b *Bus) messageAttrs(opType, opName, destination, id string) []attribute.KeyValue {
	return []attribute.KeyValue{
		attrSystem.String(b.o.System),
		attrOpType.String(opType),
		attrOpName.String(opName),
		attrDestination.String(destination),
		attrMessageID.String(id),
	}
}

// endSpan records err (if any) on span and ends it.
func endSpan(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// endProcess ends a processing span with the message's outcome.
func endProcess(span trace.Span, outcome string, err error) {
	if span.IsRecording() {
		span.SetAttributes(attrOutcome.String(outcome))
		if err != nil && outcome != outcomeAck {
			span.RecordError(err)
			if outcome == outcomeDead || outcome == outcomeRetry {
				span.SetStatus(codes.Error, err.Error())
			}
		}
	}
	span.End()
}
