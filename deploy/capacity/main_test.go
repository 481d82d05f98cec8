package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/tables.md from the checked-in measurements")

// The tables derived from the checked-in measurements are the golden file,
// and CAPACITY.md quotes them whole: a change of measurements or model
// shows in both.
func TestTablesFromCheckedInMeasurements(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"-in", "testdata"}, &out); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "tables.md")
	if *update {
		if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != string(want) {
		t.Errorf("tables differ from %s (go test ./deploy/capacity -update to accept):\n%s", golden, out.String())
	}
	doc, err := os.ReadFile(filepath.Join("..", "..", "CAPACITY.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), string(want)) {
		t.Errorf("CAPACITY.md does not quote %s as it is now: paste it between the capacity table markers", golden)
	}
}

// The model's structure, independent of the figures: per-instance topics
// bill each event once whatever the number of realtime instances; the
// shared topic bills it once per instance; every size grows with the load.
func TestModelScales(t *testing.T) {
	runs, err := load("testdata")
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) < 3 {
		t.Fatalf("%d runs checked in, want the 3 the medians are taken over", len(runs))
	}
	p := defaultParams()
	m := model(runs, p).Med
	few := defaultParams()
	few.MaxConns = 1_000_000 // a few large realtime instances
	many := defaultParams()
	many.MaxConns = 1_000 // many small ones
	for _, tg := range targets {
		a, b := size(tg, m, few), size(tg, m, many)
		if a.Realtime >= b.Realtime {
			t.Fatalf("%s: %d realtime instances with a large max_conns, %d with a small one", tg.Name, a.Realtime, b.Realtime)
		}
		if a.OwnTiB != b.OwnTiB || a.OwnUSD != b.OwnUSD {
			t.Errorf("%s: per-instance topics bill %v TiB at %d instances and %v at %d", tg.Name, a.OwnTiB, a.Realtime, b.OwnTiB, b.Realtime)
		}
		if got, want := b.SharedTiB/a.SharedTiB, float64(1+b.Realtime)/float64(1+a.Realtime); got < want*0.999 || got > want*1.001 {
			t.Errorf("%s: shared topic bill ratio %v between %d and %d instances, want %v", tg.Name, got, b.Realtime, a.Realtime, want)
		}
		if a.SharedTiB < a.OwnTiB {
			t.Errorf("%s: the shared topic bills less than a topic per instance", tg.Name)
		}
	}
	prev := sizing{}
	for i, tg := range targets {
		s := size(tg, m, p)
		if i > 0 && (s.APIPipeline < prev.APIPipeline || s.Realtime < prev.Realtime || s.PGCores <= prev.PGCores ||
			s.RedisGB <= prev.RedisGB || s.BacklogGB <= prev.BacklogGB || s.OwnTiB <= prev.OwnTiB) {
			t.Errorf("%s is sized smaller than %s: %+v after %+v", tg.Name, targets[i-1].Name, s, prev)
		}
		if s.Realtime < p.MinInstances || s.APIPipeline < p.MinInstances {
			t.Errorf("%s: fewer than %d instances of a role", tg.Name, p.MinInstances)
		}
		prev = s
	}
}

// The 1,000-byte minimum applies to events smaller than it; a larger event
// is billed its size.
func TestEventBytes(t *testing.T) {
	p := defaultParams()
	if got := eventBytes(runData{NATSBytes: 400}, p); got != 1000 {
		t.Errorf("400-byte event billed %v bytes, want 1000", got)
	}
	if got := eventBytes(runData{NATSBytes: 2500}, p); got != 2500 {
		t.Errorf("2,500-byte event billed %v bytes, want 2500", got)
	}
	// 10,000 events/s of 1 KB for a 730-hour month is 23.9 TiB a side.
	s := size(target{Conns: 1, Rate: 10000}, runData{NATSBytes: 1000, RSSPerConn: 1, APIPipelineUS: 1, RealtimeUS: 1,
		RedisCmds: 1, RedisUS: 1}, params{Cores: 2, GiB: 4, CPUTarget: 1, MemTarget: 1, MaxConns: 100, MinInstances: 1,
		Online: 1, PubSubMinBytes: 1000, PricePerTiB: 40, SecondsPerMonth: 730 * 3600, HeartbeatSeconds: 20})
	if s.OwnTiB < 2*23.8 || s.OwnTiB > 2*24.0 {
		t.Errorf("10,000 events/s of 1 KB: %v TiB a month published and pulled, want about 2 x 23.9", s.OwnTiB)
	}
}

func TestMedian(t *testing.T) {
	f := func(r runData) float64 { return r.RealtimeUS }
	rs := func(v ...float64) []runData {
		var out []runData
		for _, x := range v {
			out = append(out, runData{RealtimeUS: x})
		}
		return out
	}
	if got := median(rs(300, 100, 200), f); got != 200 {
		t.Errorf("median of 300 100 200 = %v", got)
	}
	if got := median(rs(4, 1, 3, 2), f); got != 2.5 {
		t.Errorf("median of 4 1 3 2 = %v", got)
	}
}

func TestNum(t *testing.T) {
	for _, tc := range []struct {
		x    float64
		dec  int
		want string
	}{{0, 0, "0"}, {999, 0, "999"}, {1000, 0, "1,000"}, {1234567.891, 2, "1,234,567.89"}, {-12345, 0, "-12,345"}, {0.0004, 2, "0.00"}} {
		if got := num(tc.x, tc.dec); got != tc.want {
			t.Errorf("num(%v, %d) = %q, want %q", tc.x, tc.dec, got, tc.want)
		}
	}
}

// A run without a process's CPU (an older routebench, or -pids without
// labels) is refused with a message that says what is missing.
func TestLoadNeedsEveryProcess(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"engines-1.json", "refresh-1.json", "offline-1.json", "idle-1.json"} {
		b, err := os.ReadFile(filepath.Join("testdata", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	three := `{"deliveries": 10, "missing": 0, "server_processes": [{"label": "A", "cpu_us_per_msg": 1}]}` + "\ncpu A: 1 s\n"
	if err := os.WriteFile(filepath.Join(dir, "three-1.txt"), []byte(three), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := load(dir)
	if err == nil || !strings.Contains(err.Error(), `process "B"`) {
		t.Fatalf("load = %v, want an error naming the missing process B", err)
	}
}
