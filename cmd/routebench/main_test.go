package main

import (
	"os"
	"testing"
	"time"
)

func TestLoopbackOnly(t *testing.T) {
	for _, u := range []string{
		"http://127.0.0.1:8082", "ws://127.0.0.1:8085", "http://localhost:8082/metrics",
		"http://[::1]:8082", "ws://127.1.2.3:9", "http://127.0.0.1:9090/metrics",
	} {
		if err := loopbackOnly(u); err != nil {
			t.Errorf("%s: %v", u, err)
		}
	}
	for _, u := range []string{
		"http://10.0.0.1:8082", "ws://example.com:8085", "http://0.0.0.0:8082", "http://[::]:1",
		"http://192.168.1.2", "127.0.0.1:8082", "", "http://localhost.example.com", "http://127.0.0.1.nip.io",
	} {
		if err := loopbackOnly(u); err == nil {
			t.Errorf("%q: accepted", u)
		}
	}
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.scenario != "online" || o.recipients != 1000 || o.senders != 16 || o.payload != 256 || o.rate != 0 {
		t.Errorf("defaults: %+v", o)
	}
	o, err = parseFlags([]string{"fanout", "-recipients", "10", "-duration", "3s"})
	if err != nil {
		t.Fatal(err)
	}
	if o.scenario != "fanout" || o.conns != 3 || o.recipients != 10 || o.duration != 3*time.Second {
		t.Errorf("fanout: %+v", o)
	}
	o, err = parseFlags([]string{"-scenario", "idle", "-conns", "500"})
	if err != nil {
		t.Fatal(err)
	}
	if o.scenario != "idle" || o.conns != 500 || o.totalConns != 500 {
		t.Errorf("idle: %+v", o)
	}
	o, err = parseFlags([]string{"-json", "offline", "-messages", "50"})
	if err != nil {
		t.Fatal(err)
	}
	if o.scenario != "offline" || o.messages != 50 || !o.jsonOut {
		t.Errorf("flags then scenario: %+v", o)
	}
	o, err = parseFlags([]string{"server"})
	if err != nil || o.duration != 10*time.Minute {
		t.Errorf("server: %v, duration %v", err, o.duration)
	}
	for _, args := range [][]string{
		{"bogus"},
		{"online", "-api", "http://10.1.1.1:8082"},
		{"idle", "-metrics", "http://example.com/metrics"},
		{"fanout", "-conns", "65"},
		{"idle", "-conns", "10", "-total-conns", "5"},
		{"online", "-payload", "4"},
		{"offline", "-page", "501"},
		{"online", "extra", "args"},
	} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}

func TestMetricValue(t *testing.T) {
	text := `# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 1.234432e+08
process_resident_memory_bytes_total 5
routing_pipeline_messages_total{result="ok"} 1500
routing_pipeline_messages_total{result="retry"} 3
routing_pipeline_messages_total{instance="b",result="ok"} 500
`
	if v, ok := metricValue(text, "process_resident_memory_bytes", ""); !ok || v != 123443200 {
		t.Errorf("rss: %v %v", v, ok)
	}
	if v, ok := metricValue(text, "routing_pipeline_messages_total", `result="ok"`); !ok || v != 2000 {
		t.Errorf("pipeline ok: %v %v", v, ok)
	}
	if _, ok := metricValue(text, "routing_missing", ""); ok {
		t.Error("absent metric found")
	}
}

func TestProcRSS(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("no /proc")
	}
	v, err := procRSS(os.Getpid())
	if err != nil || v < 1<<20 {
		t.Errorf("own RSS %d, %v", v, err)
	}
}
