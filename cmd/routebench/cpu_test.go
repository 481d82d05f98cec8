package main

import (
	"math"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"
)

func TestParsePIDs(t *testing.T) {
	got, err := parsePIDs(" 12,34 ,,56")
	if err != nil || !slices.Equal(got, []proc{{"", 12}, {"", 34}, {"", 56}}) {
		t.Errorf("parsePIDs: %v, %v", got, err)
	}
	got, err = parsePIDs("api=12, nats=34,56")
	if err != nil || !slices.Equal(got, []proc{{"api", 12}, {"nats", 34}, {"", 56}}) {
		t.Errorf("parsePIDs with labels: %v, %v", got, err)
	}
	for _, bad := range []string{"x", "1,-2", "0", "api=", "api=x", "=0"} {
		if _, err := parsePIDs(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	if got, err := parsePIDs(""); err != nil || got != nil {
		t.Errorf("empty: %v, %v", got, err)
	}
}

// TestProcCPUMatchesRusage reads this process's CPU from /proc and checks
// it against getrusage after burning some CPU: the two clocks agree within
// a few ticks.
func TestProcCPUMatchesRusage(t *testing.T) {
	deadline := time.Now().Add(200 * time.Millisecond)
	x := 0
	for time.Now().Before(deadline) {
		x++
	}
	_ = x
	got, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// /proc's figure counts the children this process waited for (the
	// servers of earlier tests) as getrusage's RUSAGE_CHILDREN does.
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err != nil {
		t.Fatal(err)
	}
	want := time.Duration(cpuSeconds()*float64(time.Second)) + time.Duration(ru.Utime.Nano()+ru.Stime.Nano())
	if got <= 0 || got > want+5*clockTick || got < want-5*clockTick {
		t.Errorf("/proc says %v, getrusage %v", got, want)
	}
	m := cpuMeter{procs: []proc{{"me", os.Getpid()}, {"gone", 1 << 22}}}
	if _, err := m.total(); err == nil {
		t.Error("a process that does not exist: no error")
	}
	before, _ := m.each()
	deadline = time.Now().Add(100 * time.Millisecond)
	for time.Now().Before(deadline) {
		x++
	}
	after, _ := m.each()
	sh := m.shares(before, after, 1000)
	if len(sh) != 2 || sh[0].Label != "me" || sh[0].CPUSeconds <= 0 || sh[1].CPUSeconds != 0 ||
		math.Abs(sh[0].CPUPerMsg-sh[0].CPUSeconds*1e6/1000) > 0.01 {
		t.Errorf("shares after burning CPU in this process: %+v", sh)
	}
}

func TestWindows(t *testing.T) {
	t0 := time.Unix(1000, 0)
	w := &windows{size: 10 * time.Second, start: t0}
	w.tick(t0.Add(5*time.Second), 400) // inside the first window: nothing closes
	w.tick(t0.Add(10*time.Second), 1000)
	w.tick(t0.Add(15*time.Second), 1200)
	w.tick(t0.Add(20500*time.Millisecond), 1525) // a late tick: the window is 10.5 s long
	got, ratio := w.result()
	if len(got) != 2 {
		t.Fatalf("windows: %+v", got)
	}
	if got[0].Delivered != 1000 || got[0].DeliveredPerS != 100 || got[0].StartS != 0 {
		t.Errorf("first: %+v", got[0])
	}
	if got[1].Delivered != 525 || got[1].Seconds != 10.5 || got[1].DeliveredPerS != 50 || got[1].StartS != 10 {
		t.Errorf("second: %+v", got[1])
	}
	if ratio != 0.5 {
		t.Errorf("ratio %v, want 0.5", ratio)
	}
	if _, r := (&windows{size: time.Second, start: t0}).result(); r != 0 {
		t.Errorf("no windows: ratio %v", r)
	}
}

func TestPerMessage(t *testing.T) {
	if got := perMessage(3*time.Second, 30000); got != 100 {
		t.Errorf("perMessage = %v, want 100", got)
	}
	if got := perMessage(time.Second, 0); got != 0 {
		t.Errorf("no deliveries: %v", got)
	}
}

// TestProcCPUCountsChildren runs a child that burns CPU and checks that
// its parent's reading includes it once it has been waited for.
func TestProcCPUCountsChildren(t *testing.T) {
	before, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	child := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	after, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if child < 5*clockTick {
		t.Skipf("the child used only %v, too little to tell", child)
	}
	if after-before < child-2*clockTick {
		t.Errorf("grew by %v, the child alone used %v", after-before, child)
	}
}
