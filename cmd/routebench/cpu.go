package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of utime and stime in /proc/<pid>/stat (USER_HZ,
// 100 on Linux whatever the kernel's own tick).
const clockTick = 10 * time.Millisecond

// proc is one server process named by -pids, with its label ("" when
// none was given).
type proc struct {
	label string
	pid   int
}

// parsePIDs reads -pids: process ids separated by commas, each optionally
// labelled, "label=pid" (e.g. "api=123,nats=456"), so that a summary
// reports each process's share under its name.
func parsePIDs(s string) ([]proc, error) {
	var ps []proc
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		label, num, ok := strings.Cut(f, "=")
		if !ok {
			label, num = "", f
		}
		p, err := strconv.Atoi(num)
		if err != nil || p <= 0 {
			return nil, fmt.Errorf("-pids: %q is not a process id (or label=id)", f)
		}
		ps = append(ps, proc{label: label, pid: p})
	}
	return ps, nil
}

// procCPU returns the CPU time (user plus system) process pid has used,
// with that of its children: those still running (read the same way, so
// a PostgreSQL postmaster counts its backends) and those it has waited for
// (cutime and cstime), from /proc.
func procCPU(pid int) (time.Duration, error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	// Fields 14-17 of stat: utime, stime, cutime, cstime.
	var ticks int64
	for _, s := range f[11:15] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: bad CPU time %q", pid, s)
		}
		ticks += n
	}
	total := time.Duration(ticks) * clockTick
	for _, c := range children(pid) {
		if d, err := procCPU(c); err == nil { // a child may end meanwhile
			total += d
		}
	}
	return total, nil
}

// statFields returns the fields of /proc/<pid>/stat after the command name
// (field 3 onwards).
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return nil, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	return f, nil
}

// children returns the running children of pid, from each of its threads'
// children lists.
func children(pid int) []int {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/children")
		if err != nil {
			continue
		}
		for f := range strings.FieldsSeq(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

// cpuMeter sums the CPU time of the server processes a run measures.
type cpuMeter struct {
	procs []proc
}

// each returns each process's CPU time so far, in the order of procs; a
// process that has gone counts for nothing from then on, and the error
// says which.
func (m cpuMeter) each() ([]time.Duration, error) {
	out := make([]time.Duration, len(m.procs))
	var first error
	for i, p := range m.procs {
		d, err := procCPU(p.pid)
		if err != nil && first == nil {
			first = err
		}
		out[i] = d
	}
	return out, first
}

// total returns the processes' CPU time so far (see each).
func (m cpuMeter) total() (time.Duration, error) {
	each, err := m.each()
	return sumDurations(each), err
}

func sumDurations(ds []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum
}

// pids are the processes' ids.
func (m cpuMeter) pids() []int {
	out := make([]int, len(m.procs))
	for i, p := range m.procs {
		out[i] = p.pid
	}
	return out
}

// processCPU is one server process's share of a run's CPU.
type processCPU struct {
	Label      string  `json:"label,omitempty"`
	PID        int     `json:"pid"`
	CPUSeconds float64 `json:"cpu_seconds"`
	CPUPerMsg  float64 `json:"cpu_us_per_msg"`
}

// shares returns each process's CPU between before and after (from each),
// per delivered message too.
func (m cpuMeter) shares(before, after []time.Duration, delivered int64) []processCPU {
	out := make([]processCPU, len(m.procs))
	for i, p := range m.procs {
		d := after[i] - before[i]
		out[i] = processCPU{Label: p.label, PID: p.pid, CPUSeconds: d.Seconds(), CPUPerMsg: perMessage(d, delivered)}
	}
	return out
}

// perMessage is CPU per delivered message in microseconds (0 without
// deliveries).
func perMessage(cpu time.Duration, delivered int64) float64 {
	if delivered <= 0 {
		return 0
	}
	return float64(cpu.Microseconds()) / float64(delivered)
}
