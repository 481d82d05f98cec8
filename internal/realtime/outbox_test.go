package realtime

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// outboxStep is one call on an outbox and what it must answer.
type outboxStep struct {
	do   string // see run
	id   string
	size int
	want string
}

func push(id string, size int, want string) outboxStep {
	return outboxStep{do: "push", id: id, size: size, want: want}
}

func pushEphemeral(id string, size int, want string) outboxStep {
	return outboxStep{do: "ephemeral", id: id, size: size, want: want}
}

func take(want string) outboxStep { return outboxStep{do: "take", want: want} }

func step(do, want string) outboxStep { return outboxStep{do: do, want: want} }

func held(n int) outboxStep { return outboxStep{do: "bytes", size: n} }

// run applies s to o (the clock at *now) and returns its answer:
//
//	push, ephemeral, send: "wake", "queued", "skipped" (not queued, no
//	error) or the key named by the budget error
//	ping, close, resync: "wake", "queued" or "skipped"
//	take: "none", "backlog", "urgent:<n>" or "live:<ids>"; what is taken
//	is released at once, as a writer does once it is written
//	seen: "true" or "false"
//	begin, end, mark, drop, hold, advance (size seconds): ""
func (s outboxStep) run(o *outbox, now *time.Time) string {
	answer := func(wake bool, err error) string {
		var be *budgetError
		switch {
		case errors.As(err, &be):
			return be.key
		case err != nil:
			return err.Error()
		case wake:
			return "wake"
		}
		return "queued"
	}
	data := make([]byte, s.size)
	before := len(o.live) + len(o.urgent)
	queuedOrSkipped := func(wake bool) string {
		if !wake && len(o.live)+len(o.urgent) <= before {
			return "skipped"
		}
		return answer(wake, nil)
	}
	switch s.do {
	case "push", "ephemeral", "send":
		var wake bool
		var err error
		if s.do == "send" {
			wake, err = o.Send(data)
		} else {
			wake, err = o.Push(frame{id: s.id, data: data, ephemeral: s.do == "ephemeral"})
		}
		if err == nil {
			return queuedOrSkipped(wake)
		}
		return answer(wake, err)
	case "ping":
		return queuedOrSkipped(o.Ping(data, 1))
	case "close":
		wasClosed := o.closed
		wake := o.Close(data, false)
		if wasClosed {
			return "skipped"
		}
		return answer(wake, nil)
	case "resync":
		wake := o.Resync()
		if !wake && !o.resync {
			return "skipped"
		}
		return answer(wake, nil)
	case "take":
		w := o.Take(writeChunk, nil)
		o.Release(w.bytes)
		switch w.kind {
		case workNone:
			return "none"
		case workBacklog:
			return "backlog"
		case workUrgent:
			return fmt.Sprintf("urgent:%d", len(w.urgent))
		}
		ids := make([]string, len(w.live))
		for i, f := range w.live {
			ids[i] = f.id
		}
		return "live:" + strings.Join(ids, ",")
	case "seen":
		return fmt.Sprint(o.SeenRecently(s.id))
	case "begin":
		o.BeginBacklog()
	case "end":
		o.EndBacklog()
	case "mark":
		o.MarkSent(s.id)
	case "drop":
		o.Drop()
	case "hold":
		o.Hold(int64(s.size))
	case "advance":
		*now = now.Add(time.Duration(s.size) * time.Second)
	default:
		panic("unknown step " + s.do)
	}
	return ""
}

// The outbox keeps its budget, its order and its one writer, and sends a
// message the backlog sent once, for sentWindow.
func TestOutbox(t *testing.T) {
	cases := []struct {
		name      string
		maxBytes  int64
		maxFrames int
		steps     []outboxStep
	}{
		{"byte budget reached", 100, 0, []outboxStep{
			push("a", 60, "queued"), // the outbox is made with the writer's role held
			push("b", 41, "realtime.send_buffer_bytes"),
			held(60),
			push("c", 40, "queued"),
			held(100),
			// A control frame fits within the same budget.
			{do: "send", size: 1, want: "realtime.send_buffer_bytes"},
		}},
		{"frame cap reached", 0, 2, []outboxStep{
			push("a", 10, "queued"),
			push("b", 10, "queued"),
			push("c", 10, "realtime.send_queue"),
			take("live:a,b"),
			held(0),
			push("c", 10, "queued"),
		}},
		{"the frame cap is named when both are reached", 20, 2, []outboxStep{
			push("a", 10, "queued"),
			push("b", 10, "queued"),
			push("c", 10, "realtime.send_queue"),
		}},
		{"pings and the close frame are counted, never refused", 10, 0, []outboxStep{
			push("a", 10, "queued"),
			{do: "ping", size: 6, want: "queued"},
			held(16),
			{do: "close", size: 4, want: "queued"},
			held(10), // a was dropped by the close
		}},
		{"a backlog page held counts", 100, 0, []outboxStep{
			{do: "hold", size: 80},
			push("a", 30, "realtime.send_buffer_bytes"),
			push("b", 20, "queued"),
			held(100),
		}},
		{"urgent frames first, then live frames in order", 0, 0, []outboxStep{
			push("a", 1, "queued"),
			push("b", 1, "queued"),
			{do: "send", size: 2, want: "queued"},
			{do: "ping", size: 2, want: "queued"},
			take("urgent:2"),
			take("live:a,b"),
			take("none"),
			held(0),
		}},
		{"the writer's role: held at first, woken once after it ends", 0, 0, []outboxStep{
			push("a", 1, "queued"),
			take("live:a"),
			take("none"),
			push("b", 1, "wake"),
			push("c", 1, "queued"),
			step("resync", "queued"),
			take("backlog"),
			take("live:b,c"),
			take("none"),
			step("resync", "wake"),
			{do: "ping", size: 1, want: "queued"},
		}},
		{"backlog then live: a message the pass sent is not taken live", 0, 0, []outboxStep{
			step("begin", ""),
			push("a", 5, "queued"), // arrives live while the pass runs
			{do: "mark", id: "a"},
			{do: "mark", id: "b"},
			step("end", ""),
			push("b", 5, "queued"),
			push("c", 5, "queued"),
			take("live:c"),
			held(0), // the duplicates' bytes are released when dropped
			{do: "seen", id: "a", want: "true"},
			{do: "seen", id: "c", want: "false"},
		}},
		{"a pass within the window skips what the last one sent", 0, 0, []outboxStep{
			step("begin", ""),
			{do: "mark", id: "a"},
			step("end", ""),
			{do: "advance", size: 59},
			step("begin", ""),
			{do: "seen", id: "a", want: "true"},
			{do: "mark", id: "b"},
			step("end", ""),
			{do: "seen", id: "a", want: "true"},
			{do: "seen", id: "b", want: "true"},
		}},
		{"the sent ids expire sentWindow after the pass", 0, 0, []outboxStep{
			step("begin", ""),
			{do: "mark", id: "a"},
			step("end", ""),
			{do: "advance", size: 61},
			step("begin", ""),
			{do: "seen", id: "a", want: "false"},
			step("end", ""),
		}},
		{"the writer forgets the sent ids once idle past the window", 0, 0, []outboxStep{
			step("begin", ""),
			{do: "mark", id: "a"},
			step("end", ""),
			take("none"),
			{do: "seen", id: "a", want: "true"},
			{do: "advance", size: 61},
			push("b", 1, "wake"),
			take("live:b"),
			take("none"),
			{do: "seen", id: "a", want: "false"},
			push("a", 1, "wake"),
			take("live:a"),
		}},
		{"during a pass, a live frame past the budget asks for another pass", 10, 0, []outboxStep{
			step("begin", ""),
			push("a", 4, "queued"),
			pushEphemeral("e", 4, "queued"),
			push("b", 4, "skipped"), // a is dropped, b not queued: the next pass sends both
			held(4),
			pushEphemeral("f", 4, "queued"),
			pushEphemeral("g", 4, "realtime.send_buffer_bytes"), // ephemeral: only a live frame carries it
			step("end", ""),
			take("backlog"),
			take("live:e,f"),
		}},
		{"nothing is queued after the close frame", 0, 0, []outboxStep{
			push("a", 3, "queued"),
			{do: "close", size: 2, want: "queued"},
			push("b", 1, "skipped"),
			step("send", "skipped"),
			{do: "ping", size: 1, want: "skipped"},
			step("resync", "skipped"),
			take("urgent:1"),
			take("none"),
			held(0),
		}},
		{"a dropped outbox holds and counts nothing", 100, 0, []outboxStep{
			push("a", 50, "queued"),
			{do: "hold", size: 20},
			step("drop", ""),
			held(0),
			{do: "hold", size: 20},
			held(0),
			push("b", 1, "skipped"),
			take("none"),
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
			o := newOutbox(tc.maxBytes, tc.maxFrames)
			o.now = func() time.Time { return now }
			for i, s := range tc.steps {
				if s.do == "bytes" {
					if o.bytes != int64(s.size) {
						t.Fatalf("step %d: %d bytes counted, want %d", i, o.bytes, s.size)
					}
					continue
				}
				if got := s.run(o, &now); got != s.want {
					t.Fatalf("step %d (%s %s): %q, want %q", i, s.do, s.id, got, s.want)
				}
			}
		})
	}
}

// Take splits the live frames in writes of about max bytes (at least one
// frame) and leaves the rest, in order, for the next.
func TestOutboxTakeSplits(t *testing.T) {
	o := newOutbox(0, 0)
	for _, f := range []struct {
		id   string
		size int
	}{{"a", 40}, {"b", 40}, {"c", 40}, {"d", 200}, {"e", 1}} {
		if _, err := o.Push(frame{id: f.id, data: make([]byte, f.size)}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	var batch []frame
	for {
		w := o.Take(100, batch)
		if w.kind == workNone {
			break
		}
		ids := make([]string, len(w.live))
		for i, f := range w.live {
			ids[i] = f.id
		}
		got = append(got, strings.Join(ids, ","))
		o.Release(w.bytes)
		batch = w.live[:0]
	}
	if want := []string{"a,b", "c", "d", "e"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("writes %q, want %q", got, want)
	}
}

// The close reason names the limit and its key.
func TestBudgetErrorText(t *testing.T) {
	o := newOutbox(1<<20, 0)
	_, err := o.Push(frame{id: "a", data: make([]byte, 1<<20+1)})
	if err == nil || err.Error() != "more than 1048576 bytes waiting (realtime.send_buffer_bytes); reconnect for the rest" {
		t.Fatalf("error %v", err)
	}
}
