package bus

import (
	"bytes"
	"maps"
	"strconv"
	"strings"
	"testing"

	"github.com/go-routing-service/routingservice/internal/bus/driver"
)

func testEvents(inst string, n, body int) []*driver.Message {
	ms := make([]*driver.Message, n)
	for i := range ms {
		ms[i] = &driver.Message{
			ID: inst + "-" + strconv.Itoa(i), DedupID: inst + "-" + strconv.Itoa(i), Instance: inst,
			OrderingKey: inst + "/r" + strconv.Itoa(i%3),
			Attributes:  map[string]string{AttrInstance: inst, "stored": "1", AttrTraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
			Data:        bytes.Repeat([]byte{byte('a' + i%26)}, body),
		}
	}
	return ms
}

// Packs group events by instance, in order, and unpack to what went in.
func TestPackRoundTrip(t *testing.T) {
	b := &Bus{packKey: newPackKey()}
	a, c := testEvents("inst-a", 5, 40), testEvents("inst-c", 3, 0)
	in := []*driver.Message{a[0], c[0], a[1], a[2], c[1], a[3], c[2], a[4]}
	packs := b.packs(in)
	if len(packs) != 2 {
		t.Fatalf("%d packs, want 2", len(packs))
	}
	for i, want := range [][]*driver.Message{a, c} {
		p := packs[i]
		if p.Instance != want[0].Instance || p.Attributes[AttrInstance] != want[0].Instance ||
			p.Attributes[AttrPacked] != strconv.Itoa(len(want)) || p.OrderingKey != b.packKey || p.DedupID != "" {
			t.Fatalf("pack %d: %+v", i, p)
		}
		p.DeliveryAttempt = 3
		got, err := unpack(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("pack %d: %d events, want %d", i, len(got), len(want))
		}
		for j, g := range got {
			w := want[j]
			if g.ID != w.ID || g.OrderingKey != w.OrderingKey || !bytes.Equal(g.Data, w.Data) || !maps.Equal(g.Attributes, w.Attributes) ||
				g.Instance != w.Instance || g.DeliveryAttempt != 3 {
				t.Errorf("pack %d event %d = %+v, want %+v on attempt 3", i, j, g, w)
			}
		}
	}
	if packs[0].ID == packs[1].ID {
		t.Errorf("two packs share the id %s", packs[0].ID)
	}
}

// A pack stays under maxPackBytes; an event larger than that travels alone.
func TestPackSplitsBySize(t *testing.T) {
	b := &Bus{packKey: newPackKey()}
	in := testEvents("inst", 10, 200<<10) // 200 KiB each: two per pack
	big := testEvents("inst", 1, maxPackBytes+1)[0]
	big.ID = "big"
	in = append(in[:3], append([]*driver.Message{big}, in[3:]...)...)
	packs := b.packs(in)
	var ids []string
	for _, p := range packs {
		evs, err := unpack(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) > 1 && len(p.Data) > maxPackBytes {
			t.Errorf("pack of %d events is %d bytes, over %d", len(evs), len(p.Data), maxPackBytes)
		}
		for _, e := range evs {
			ids = append(ids, e.ID)
		}
	}
	if want := []string{"inst-0", "inst-1", "inst-2", "big", "inst-3", "inst-4", "inst-5", "inst-6", "inst-7", "inst-8", "inst-9"}; strings.Join(ids, " ") != strings.Join(want, " ") {
		t.Errorf("events in order %v, want %v", ids, want)
	}
	if len(packs) != 7 {
		t.Errorf("%d packs, want 7 (2+1, big, 2, 2, 2, 1)", len(packs))
	}
}

func TestUnpackRefusesMalformed(t *testing.T) {
	b := &Bus{packKey: newPackKey()}
	good := b.packs(testEvents("inst", 2, 10))[0].Data
	for name, body := range map[string][]byte{
		"empty":           nil,
		"unknown version": append([]byte{2}, good[1:]...),
		"no events":       {packVersion, 0},
		"truncated":       good[:len(good)-1],
		"trailing bytes":  append(append([]byte{}, good...), 0),
		"length past end": {packVersion, 1, 200, 1},
		"no id":           {packVersion, 1, 0, 0, 0, 0},
	} {
		if _, err := unpack(&driver.Message{Data: body}); err == nil {
			t.Errorf("%s: unpacked", name)
		}
	}
}

// FuzzUnpack: any body either unpacks into events that pack back to the
// same events, or is refused; it never panics.
func FuzzUnpack(f *testing.F) {
	b := &Bus{packKey: newPackKey()}
	f.Add(b.packs(testEvents("inst", 3, 20))[0].Data)
	f.Add([]byte{packVersion, 1, 1, 'x', 0, 0, 0})
	f.Add([]byte{packVersion, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, body []byte) {
		evs, err := unpack(&driver.Message{Data: body, Instance: "inst"})
		if err != nil {
			return
		}
		if len(evs) == 0 || len(evs) > maxPackEvents {
			t.Fatalf("%d events unpacked", len(evs))
		}
		again, err := unpack(b.pack("inst", evs, 0))
		if err != nil {
			t.Fatalf("repack: %v", err)
		}
		for i := range evs {
			if again[i].ID != evs[i].ID || again[i].OrderingKey != evs[i].OrderingKey || !bytes.Equal(again[i].Data, evs[i].Data) ||
				!maps.Equal(again[i].Attributes, evs[i].Attributes) {
				t.Fatalf("event %d changed on repacking", i)
			}
		}
	})
}

// BenchmarkPack packs 16 delivery events of 400-byte bodies for one
// instance; BenchmarkUnpack reads them back.
func BenchmarkPack(b *testing.B) {
	bus := &Bus{packKey: newPackKey()}
	evs := testEvents("inst", 16, 400)
	b.ReportAllocs()
	for b.Loop() {
		bus.packs(evs)
	}
}

func BenchmarkUnpack(b *testing.B) {
	bus := &Bus{packKey: newPackKey()}
	p := bus.packs(testEvents("inst", 16, 400))[0]
	b.ReportAllocs()
	b.SetBytes(int64(len(p.Data)))
	for b.Loop() {
		if _, err := unpack(p); err != nil {
			b.Fatal(err)
		}
	}
}
