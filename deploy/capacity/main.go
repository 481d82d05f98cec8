// Command capacity derives the capacity model of CAPACITY.md from
// measurements: the outputs of deploy/capacity/measure.sh (routebench -json
// summaries of three instances on NATS + PostgreSQL + Redis, of an offline
// run into PostgreSQL and of idle WebSockets, and the engines' counters
// around the three-instance runs). It takes the median of the runs of each
// figure and prints, as Markdown, what one core and one GiB hold per role,
// the instances and engine sizes for the three target deployments, and the
// monthly Pub/Sub bill of each delivery layout.
//
//	go run ./deploy/capacity [-in DIR]     # default deploy/capacity/testdata
//
// The sizing assumptions (instance size, target utilisation, share of
// messages to recipients online, prices) are flags, printed with the
// tables.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "capacity:", err)
		os.Exit(1)
	}
}

func run(args []string, w io.Writer) error {
	fs := flag.NewFlagSet("capacity", flag.ContinueOnError)
	in := fs.String("in", "deploy/capacity/testdata", "directory of measure.sh outputs (three-N.txt, engines-N.json, offline-N.json, idle-N.json)")
	p := defaultParams()
	fs.Float64Var(&p.Cores, "cores", p.Cores, "vCPUs of one api+pipeline or realtime instance")
	fs.Float64Var(&p.GiB, "gib", p.GiB, "memory of one realtime instance, GiB")
	fs.Float64Var(&p.CPUTarget, "cpu-target", p.CPUTarget, "share of an instance's or engine's CPU used at the target rate (headroom for peaks and a lost instance)")
	fs.Float64Var(&p.MemTarget, "mem-target", p.MemTarget, "share of a realtime instance's memory held by connections")
	fs.IntVar(&p.MaxConns, "max-conns", p.MaxConns, "realtime.max_conns of one instance (config/production.yaml)")
	fs.IntVar(&p.MinInstances, "min-instances", p.MinInstances, "instances per role at least (one may fail)")
	fs.Float64Var(&p.Online, "online", p.Online, "share of messages whose recipient is connected (delivered live, acked at once); the rest wait in the store")
	fs.Float64Var(&p.IngressShare, "ingress", p.IngressShare, "share of messages that cross the ingress topic (0: api and pipeline in one process, pipeline.local_handoff)")
	fs.Float64Var(&p.PricePerTiB, "price-tib", p.PricePerTiB, "Pub/Sub throughput price, USD per TiB (publish and subscribe each)")
	fs.Float64Var(&p.FreeGiB, "free-gib", p.FreeGiB, "Pub/Sub throughput free each month, GiB")
	if err := fs.Parse(args); err != nil {
		return err
	}
	runs, err := load(*in)
	if err != nil {
		return err
	}
	m := model(runs, p)
	if b, err := os.ReadFile(filepath.Join(*in, "meta.txt")); err == nil {
		m.Meta = strings.Split(strings.TrimSpace(string(b)), "\n")
	}
	m.write(w)
	return nil
}

// params are the sizing assumptions.
type params struct {
	Cores, GiB           float64
	CPUTarget, MemTarget float64
	MaxConns             int
	MinInstances         int
	Online               float64
	IngressShare         float64
	HeartbeatSeconds     float64
	PubSubMinBytes       float64
	PricePerTiB          float64
	FreeGiB              float64
	SecondsPerMonth      float64
}

func defaultParams() params {
	return params{
		Cores: 2, GiB: 4, CPUTarget: 0.6, MemTarget: 0.7, MaxConns: 20000, MinInstances: 2,
		Online: 0.8, IngressShare: 0, HeartbeatSeconds: 20,
		// Pub/Sub bills at least 1,000 bytes per publish or pull request,
		// $40 per TiB after the first 10 GiB of the month (list prices as
		// known in 2025; see CAPACITY.md).
		PubSubMinBytes: 1000, PricePerTiB: 40, FreeGiB: 10,
		SecondsPerMonth: 730 * 3600,
	}
}

// runData is one run's figures, each per delivered message unless named
// otherwise.
type runData struct {
	N                  int
	Delivered          float64 // messages delivered in the three-instance run
	DeliveredPerS      float64
	P99ms              float64
	APIPipelineUS      float64 // A + B
	RealtimeUS         float64 // C
	NATSUS             float64
	RedisUS            float64
	PostgresUS         float64
	PGCommits          float64
	PGRows             float64 // inserted + updated + deleted
	WALBytes           float64
	NATSMsgs           float64 // messages into NATS
	NATSBytes          float64 // bytes into NATS
	RedisCmds          float64
	RefreshUS          float64 // Redis CPU per presence refresh (a connection's heartbeat)
	PresenceBytes      float64 // Redis memory per presence key (one connected user)
	StoreBytes         float64 // PostgreSQL bytes per pending message
	OfflineStoredPerS  float64
	RSSPerConn         float64 // resident bytes per idle WebSocket
	RSSBase            float64 // the realtime server's resident bytes before its connections
	OfflineAccepted    float64
	PresenceKeys       float64
	IdleConns          float64
	ThreeInstanceSendS float64
}

// summary is the part of routebench's -json summary read here.
type summary struct {
	Accepted      int64   `json:"accepted"`
	Deliveries    int64   `json:"deliveries"`
	DeliveredPerS float64 `json:"delivered_per_s"`
	SendSeconds   float64 `json:"send_seconds"`
	Latency       *struct {
		P99 float64 `json:"p99_ms"`
	} `json:"latency"`
	Missing         int64 `json:"missing"`
	ServerProcesses []struct {
		Label     string  `json:"label"`
		CPUPerMsg float64 `json:"cpu_us_per_msg"`
	} `json:"server_processes"`
	Offline *struct {
		StoredPerS float64 `json:"stored_per_s"`
	} `json:"offline"`
	Idle *struct {
		TotalConns int     `json:"total_conns"`
		RSSBefore  float64 `json:"rss_before_bytes"`
		RSSPerConn float64 `json:"rss_per_conn_bytes"`
	} `json:"idle"`
	StorePeakBytes float64 `json:"store_peak_bytes"`
}

type counters struct {
	PG struct {
		Commits  float64 `json:"xact_commit"`
		Inserted float64 `json:"tup_inserted"`
		Updated  float64 `json:"tup_updated"`
		Deleted  float64 `json:"tup_deleted"`
		WAL      float64 `json:"wal_bytes"`
	} `json:"pg"`
	NATS struct {
		InMsgs  float64 `json:"in_msgs"`
		InBytes float64 `json:"in_bytes"`
	} `json:"nats"`
	Redis struct {
		Commands float64 `json:"commands"`
	} `json:"redis"`
}

type engines struct {
	Before, After counters
	Presence      struct {
		Keys      float64 `json:"keys"`
		Bytes     float64 `json:"bytes"`
		BaseBytes float64 `json:"base_bytes"`
	} `json:"presence"`
}

var threeName = regexp.MustCompile(`^three-(\d+)\.txt$`)

// load reads every run of dir.
func load(dir string) ([]runData, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var ns []int
	for _, e := range entries {
		if m := threeName.FindStringSubmatch(e.Name()); m != nil {
			n, _ := strconv.Atoi(m[1])
			ns = append(ns, n)
		}
	}
	if len(ns) == 0 {
		return nil, fmt.Errorf("%s: no three-N.txt (run deploy/capacity/measure.sh)", dir)
	}
	sort.Ints(ns)
	var runs []runData
	for _, n := range ns {
		r, err := loadRun(dir, n)
		if err != nil {
			return nil, fmt.Errorf("run %d: %w", n, err)
		}
		runs = append(runs, r)
	}
	return runs, nil
}

func loadRun(dir string, n int) (runData, error) {
	r := runData{N: n}
	name := func(kind, ext string) string { return filepath.Join(dir, fmt.Sprintf("%s-%d.%s", kind, n, ext)) }
	var three summary
	if err := readSummary(name("three", "txt"), &three); err != nil {
		return r, err
	}
	if three.Deliveries <= 0 || three.Missing != 0 {
		return r, fmt.Errorf("three-instance run delivered %d, %d missing", three.Deliveries, three.Missing)
	}
	d := float64(three.Deliveries)
	r.Delivered, r.DeliveredPerS, r.ThreeInstanceSendS = d, three.DeliveredPerS, three.SendSeconds
	if three.Latency != nil {
		r.P99ms = three.Latency.P99
	}
	found := map[string]bool{}
	for _, p := range three.ServerProcesses {
		found[p.Label] = true
		switch p.Label {
		case "A", "B":
			r.APIPipelineUS += p.CPUPerMsg
		case "C":
			r.RealtimeUS = p.CPUPerMsg
		case "nats":
			r.NATSUS = p.CPUPerMsg
		case "redis":
			r.RedisUS = p.CPUPerMsg
		case "postgres":
			r.PostgresUS = p.CPUPerMsg
		}
	}
	for _, l := range []string{"A", "B", "C", "nats", "redis", "postgres"} {
		if !found[l] {
			return r, fmt.Errorf("three-instance run: no CPU of process %q (routebench -pids label=pid)", l)
		}
	}

	var e engines
	if err := readJSON(name("engines", "json"), &e); err != nil {
		return r, err
	}
	b, a := e.Before, e.After
	r.PGCommits = (a.PG.Commits - b.PG.Commits) / d
	r.PGRows = (a.PG.Inserted + a.PG.Updated + a.PG.Deleted - b.PG.Inserted - b.PG.Updated - b.PG.Deleted) / d
	r.WALBytes = (a.PG.WAL - b.PG.WAL) / d
	r.NATSMsgs = (a.NATS.InMsgs - b.NATS.InMsgs) / d
	r.NATSBytes = (a.NATS.InBytes - b.NATS.InBytes) / d
	r.RedisCmds = (a.Redis.Commands - b.Redis.Commands) / d
	if e.Presence.Keys <= 0 {
		return r, errors.New("engines: no presence keys sampled")
	}
	r.PresenceKeys = e.Presence.Keys
	r.PresenceBytes = (e.Presence.Bytes - e.Presence.BaseBytes) / e.Presence.Keys

	var refresh struct {
		Commands   float64 `json:"commands"`
		CPUSeconds float64 `json:"redis_cpu_seconds"`
	}
	if err := readJSON(name("refresh", "json"), &refresh); err != nil {
		return r, err
	}
	if refresh.Commands <= 0 {
		return r, errors.New("refresh: no Redis commands counted")
	}
	// A refresh is one script that Redis counts as five commands.
	r.RefreshUS = refresh.CPUSeconds * 1e6 / (refresh.Commands / refreshCommands)

	var off summary
	if err := readJSON(name("offline", "json"), &off); err != nil {
		return r, err
	}
	if off.Accepted <= 0 || off.StorePeakBytes <= 0 || off.Offline == nil {
		return r, errors.New("offline run: nothing stored or no table size")
	}
	r.OfflineAccepted = float64(off.Accepted)
	r.StoreBytes = off.StorePeakBytes / float64(off.Accepted)
	r.OfflineStoredPerS = off.Offline.StoredPerS

	var idle summary
	if err := readJSON(name("idle", "json"), &idle); err != nil {
		return r, err
	}
	if idle.Idle == nil || idle.Idle.RSSPerConn <= 0 {
		return r, errors.New("idle run: no resident memory per connection")
	}
	r.RSSPerConn, r.RSSBase, r.IdleConns = idle.Idle.RSSPerConn, idle.Idle.RSSBefore, float64(idle.Idle.TotalConns)
	return r, nil
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// readSummary reads the first JSON object of a file that holds other
// lines after it (three-instances.sh prints its own).
func readSummary(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	i := strings.Index(string(b), "{")
	if i < 0 {
		return fmt.Errorf("%s: no JSON summary", path)
	}
	if err := json.NewDecoder(strings.NewReader(string(b[i:]))).Decode(v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// median of the runs' values of one figure.
func median(runs []runData, f func(runData) float64) float64 {
	v := make([]float64, len(runs))
	for i, r := range runs {
		v[i] = f(r)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// target is one deployment to size.
type target struct {
	Name  string
	Conns float64 // connected users (one WebSocket each)
	Rate  float64 // messages per second
}

var targets = []target{
	{"100,000 connected, 1,000 msg/s", 1e5, 1e3},
	{"1 million connected, 10,000 msg/s", 1e6, 1e4},
	{"10 million connected, 50,000 msg/s", 1e7, 5e4},
}

// sizing is one target's result.
type sizing struct {
	T target

	APIPipeline, Realtime   int
	RealtimeBound           string
	RealtimeByCPU           int // realtime instances each bound asks for
	RealtimeByMem           int
	RealtimeByCap           int
	PGCores                 float64
	PGCommitsPerS, PGRowsPS float64
	WALMBPerS               float64
	BacklogGB, BacklogAllGB float64
	RedisGB, RedisOpsPerS   float64
	RedisCores              float64
	RedisRefreshCores       float64 // of RedisCores, the heartbeats'
	NATSMsgsPerS, NATSMBPS  float64
	NATSCores               float64

	EventsPerS      float64 // Pub/Sub messages published per second
	OwnTiB, OwnUSD  float64 // per-instance topics
	SharedTiB       float64 // one shared topic, a filtered subscription per instance
	SharedUSD       float64
	SharedPerEvent  float64 // subscriptions billed per event in the shared layout
	OwnPerEventSubs float64
}

// result is the whole model.
type result struct {
	P    params
	Runs []runData
	Med  runData
	Size []sizing
	Meta []string // meta.txt's lines: when, which commit, how busy
}

func model(runs []runData, p params) result {
	med := func(f func(runData) float64) float64 { return median(runs, f) }
	m := runData{
		Delivered:         med(func(r runData) float64 { return r.Delivered }),
		DeliveredPerS:     med(func(r runData) float64 { return r.DeliveredPerS }),
		P99ms:             med(func(r runData) float64 { return r.P99ms }),
		APIPipelineUS:     med(func(r runData) float64 { return r.APIPipelineUS }),
		RealtimeUS:        med(func(r runData) float64 { return r.RealtimeUS }),
		NATSUS:            med(func(r runData) float64 { return r.NATSUS }),
		RedisUS:           med(func(r runData) float64 { return r.RedisUS }),
		PostgresUS:        med(func(r runData) float64 { return r.PostgresUS }),
		PGCommits:         med(func(r runData) float64 { return r.PGCommits }),
		PGRows:            med(func(r runData) float64 { return r.PGRows }),
		WALBytes:          med(func(r runData) float64 { return r.WALBytes }),
		NATSMsgs:          med(func(r runData) float64 { return r.NATSMsgs }),
		NATSBytes:         med(func(r runData) float64 { return r.NATSBytes }),
		RedisCmds:         med(func(r runData) float64 { return r.RedisCmds }),
		RefreshUS:         med(func(r runData) float64 { return r.RefreshUS }),
		PresenceBytes:     med(func(r runData) float64 { return r.PresenceBytes }),
		StoreBytes:        med(func(r runData) float64 { return r.StoreBytes }),
		OfflineStoredPerS: med(func(r runData) float64 { return r.OfflineStoredPerS }),
		RSSPerConn:        med(func(r runData) float64 { return r.RSSPerConn }),
		RSSBase:           med(func(r runData) float64 { return r.RSSBase }),
	}
	res := result{P: p, Runs: runs, Med: m}
	for _, t := range targets {
		res.Size = append(res.Size, size(t, m, p))
	}
	return res
}

const gib = 1 << 30

// refreshCommands is what Redis counts for one presence refresh: the
// script's call and its TIME, ZREMRANGEBYSCORE, ZADD and PEXPIRE.
const refreshCommands = 5

// eventBytes is what Pub/Sub bills for one event: its size (measured as
// the bytes per message into NATS, body and headers) but at least the
// minimum per request (one event per request: batching lowers it).
func eventBytes(m runData, p params) float64 { return math.Max(p.PubSubMinBytes, m.NATSBytes) }

func size(t target, m runData, p params) sizing {
	s := sizing{T: t}
	cpu := func(us float64) float64 { return t.Rate * us / 1e6 / p.CPUTarget }
	instances := func(cores float64) int { return max(p.MinInstances, int(math.Ceil(cores/p.Cores))) }

	s.APIPipeline = instances(cpu(m.APIPipelineUS))
	byCPU := instances(cpu(m.RealtimeUS))
	perInstanceMem := (p.GiB*gib*p.MemTarget - m.RSSBase) / m.RSSPerConn
	byMem := int(math.Ceil(t.Conns / perInstanceMem))
	byCap := int(math.Ceil(t.Conns / float64(p.MaxConns)))
	s.RealtimeByCPU, s.RealtimeByMem, s.RealtimeByCap = byCPU, byMem, byCap
	s.Realtime, s.RealtimeBound = byCPU, "CPU"
	if byMem > s.Realtime {
		s.Realtime, s.RealtimeBound = byMem, "memory"
	}
	if byCap > s.Realtime {
		s.Realtime, s.RealtimeBound = byCap, "max_conns"
	}

	s.PGCores = cpu(m.PostgresUS)
	s.PGCommitsPerS = t.Rate * m.PGCommits
	s.PGRowsPS = t.Rate * m.PGRows
	s.WALMBPerS = t.Rate * m.WALBytes / 1e6
	s.BacklogGB = t.Rate * (1 - p.Online) * 86400 * m.StoreBytes / 1e9
	s.BacklogAllGB = t.Rate * 86400 * m.StoreBytes / 1e9

	s.RedisGB = t.Conns * m.PresenceBytes / 1e9
	// A heartbeat refreshes every connection: one script per connection
	// (refreshCommands commands to Redis), at the measured CPU per
	// refresh. The run's own heartbeats (1,000 connections) are in its
	// per-message figures already, a small part of them.
	refreshes := t.Conns / p.HeartbeatSeconds
	s.RedisOpsPerS = t.Rate*m.RedisCmds + refreshCommands*refreshes
	s.RedisRefreshCores = refreshes * m.RefreshUS / 1e6 / p.CPUTarget
	s.RedisCores = t.Rate*m.RedisUS/1e6/p.CPUTarget + s.RedisRefreshCores

	s.NATSMsgsPerS = t.Rate * m.NATSMsgs
	s.NATSMBPS = t.Rate * m.NATSBytes / 1e6
	s.NATSCores = cpu(m.NATSUS)

	// Pub/Sub: a delivery event per message delivered live (packing is off
	// on Pub/Sub), an ingress message per message that crosses the ingress
	// topic; each billed once published and once per subscription it
	// reaches.
	delivery := t.Rate * p.Online
	ingress := t.Rate * p.IngressShare
	s.EventsPerS = delivery + ingress
	b := eventBytes(m, p)
	tib := func(eventsPerS float64) float64 { return eventsPerS * b * p.SecondsPerMonth / (1 << 40) }
	s.OwnPerEventSubs = 1
	s.SharedPerEvent = float64(s.Realtime)
	s.OwnTiB = tib(2*delivery + 2*ingress)
	s.SharedTiB = tib(delivery*(1+s.SharedPerEvent) + 2*ingress)
	bill := func(t float64) float64 { return math.Max(0, t-p.FreeGiB/1024) * p.PricePerTiB }
	s.OwnUSD, s.SharedUSD = bill(s.OwnTiB), bill(s.SharedTiB)
	return s
}
