// Command routebench is the routing service's load generator and latency
// meter. Scenarios (first argument, or -scenario):
//
//	online   N recipients hold one WebSocket each; M senders POST one message per
//	         request, flat out or at -rate; latency is send start to WebSocket receipt
//	         (-send ws: each sender holds a WebSocket and pipelines its sends,
//	         -inflight unanswered at a time)
//	fanout   the same with -conns WebSockets per recipient: each must get every message
//	group    online's recipients; each send is one POST /v1/messages/batch of -size
//	         messages to -size of them in turn (a group message fanned out to its
//	         members' devices); send latency is the batch's
//	offline  recipients stay away; M senders send -messages as fast as they can, then
//	         every recipient pages through GET /v1/messages and acks each page
//	idle     open -conns WebSockets, hold them for -duration and report the server's
//	         resident memory per connection; then check delivery to a sample of them
//	server   run the embedded instance in this process until stdin closes, a signal
//	         or -duration (default 10m); prints its addresses, for other routebench
//	         processes to share it
//	floor    the machine's bound for durable answers, without the service: online's
//	         senders POST to a server in this process that answers 202 once the body
//	         is appended to a file and fsynced, one fsync for all requests waiting
//	         (group commit), and does nothing else (-sync=false: without the fsync)
//
// Examples:
//
//	routebench online -embedded -duration 10s [-rate 5000]
//	routebench offline -embedded -messages 10000 [-recipients 1]
//	routebench online -embedded -send ws -inflight 8
//	routebench group -embedded -size 100
//	routebench fanout -embedded -recipients 100 -conns 4
//	routebench idle -embedded -conns 10000 -duration 30s
//	routebench idle -api http://127.0.0.1:8082 -ws ws://127.0.0.1:8085 -pid $(pgrep -n routingservice) -conns 10000
//	routebench floor -duration 10s [-sync=false]
//
// -embedded starts an instance in process on a temporary data dir with the API
// rate limit off (idle runs it as a child process, "routebench server", so
// that the resident memory measured is the server's alone). Without it,
// routebench targets a running service with tokens signed with JWT_SECRET
// (set api.rate_limit: 0 there). Every target must be a loopback address;
// every phase stops by itself (-duration, -messages, -drain).
//
// A process may hold about 20,000 descriptors here: for more idle connections
// run several idle processes against one server, -conns each; only one of
// them reads the RSS (-pid or -metrics, with -total-conns the sum), see
// runIdle. WebSockets leave from 127.0.0.2-127.0.0.250 in turn, so that the
// ephemeral ports of one source address do not run out.
//
// Every message answered 202 must arrive: at the end the run reports the
// missing ones and exits with status 1 if there are any. -json prints the
// summary as JSON on stdout; progress then goes to stderr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/pkg/client"
)

type options struct {
	scenario   string
	api, ws    string
	metrics    string
	pid        int
	embedded   bool
	config     string
	senders    int
	recipients int
	conns      int
	totalConns int
	messages   int
	sample     int
	page       int
	rate       float64
	duration   time.Duration
	drain      time.Duration
	payload    int
	jsonOut    bool
	cpuProfile string
	memProfile string
	sync       bool
	window     time.Duration
	ephemeral  bool
	pids       []proc
	send       string          // online, fanout: http or ws
	inflight   int             // -send ws: sends unanswered per WebSocket
	size       int             // group: messages per batch
	set        map[string]bool // flags given on the command line
}

var scenarios = []string{"online", "fanout", "group", "offline", "idle", "server", "floor"}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "routebench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("routebench", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: routebench [%s] [flags]\n", strings.Join(scenarios, "|"))
		fs.PrintDefaults()
	}
	fs.StringVar(&o.scenario, "scenario", "online", "scenario: "+strings.Join(scenarios, ", ")+" (or the first argument)")
	fs.StringVar(&o.api, "api", "http://127.0.0.1:8082", "API base URL (loopback only)")
	fs.StringVar(&o.ws, "ws", "ws://127.0.0.1:8085", "WebSocket base URL (loopback only)")
	fs.StringVar(&o.metrics, "metrics", "", "the server's Prometheus URL, e.g. http://127.0.0.1:9090/metrics, the operations listener (loopback only): idle reads process_resident_memory_bytes, offline the pipeline's count")
	fs.IntVar(&o.pid, "pid", 0, "idle: read the server's resident memory from /proc/<pid>/status (VmRSS)")
	fs.BoolVar(&o.embedded, "embedded", false, "start an instance on a temporary data dir, rate limit off (in process; idle: as a child process)")
	fs.StringVar(&o.config, "config", "", "with -embedded: config file for the instance; else the server's config file, whose data dir holds its generated secret when JWT_SECRET is unset")
	fs.IntVar(&o.senders, "senders", 16, "concurrent senders (one HTTP request at a time each)")
	fs.IntVar(&o.recipients, "recipients", 1000, "recipients (online: one WebSocket each; fanout: -conns each)")
	fs.IntVar(&o.conns, "conns", 0, "fanout: WebSockets per recipient (default 3, at most 64); idle: WebSockets this process holds, one recipient each (default 1000)")
	fs.IntVar(&o.totalConns, "total-conns", 0, "idle: connections held by all routebench processes together, the divisor of the RSS growth (default -conns)")
	fs.IntVar(&o.messages, "messages", 10000, "offline: messages to send")
	fs.IntVar(&o.sample, "sample", 100, "idle: idle connections that get one message each after the hold")
	fs.IntVar(&o.page, "page", 500, "offline: GET /v1/messages page size (1-500)")
	fs.Float64Var(&o.rate, "rate", 0, "messages per second offered in total (0: as fast as possible)")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "online, fanout: how long to send; idle: how long to hold; server: lifetime (default 10m)")
	fs.DurationVar(&o.drain, "drain", 10*time.Second, "how long to wait for deliveries still owed after sending (offline: for the backlog to be stored)")
	fs.IntVar(&o.payload, "payload", 256, "payload bytes (the first 8 carry the send time)")
	fs.BoolVar(&o.jsonOut, "json", false, "print the summary as JSON on stdout (progress on stderr)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write this process's CPU profile to the file (the load generator's own cost)")
	fs.StringVar(&o.memProfile, "memprofile", "", "write this process's allocation profile (allocs) to the file at the end")
	fs.BoolVar(&o.ephemeral, "ephemeral", false, "online, fanout: send every message ephemeral (delivered live only, never stored)")
	fs.DurationVar(&o.window, "window", time.Minute, "online, fanout: report deliveries per window of this length, and the last window's rate over the first's (0: off)")
	pids := fs.String("pids", "", "server process ids, comma-separated, each optionally label=id (a run on several instances sums them, engines too): their CPU per delivered message, from /proc/<pid>/stat, in all and per process")
	fs.BoolVar(&o.sync, "sync", true, "floor: fsync the file before each group of 202s (false: the bound without durability)")
	fs.StringVar(&o.send, "send", "http", "online, fanout: how senders send: http (one POST /v1/messages per message) or ws (over a WebSocket each, -inflight sends unanswered at a time)")
	fs.IntVar(&o.inflight, "inflight", 8, "-send ws: sends in flight per sender's WebSocket")
	fs.IntVar(&o.size, "size", 100, "group: messages per batch, each to another recipient (at most -recipients)")
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		o.scenario, args = args[0], args[1:]
		if err := fs.Parse(args); err != nil {
			return o, err
		}
	} else {
		if err := fs.Parse(args); err != nil {
			return o, err
		}
		if fs.NArg() > 0 {
			o.scenario = fs.Arg(0)
			if err := fs.Parse(fs.Args()[1:]); err != nil {
				return o, err
			}
		}
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	o.set = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { o.set[f.Name] = true })
	var err error
	if o.pids, err = parsePIDs(*pids); err != nil {
		return o, err
	}
	return o, o.validate()
}

func (o *options) validate() error {
	switch o.send {
	case "http", "ws":
	default:
		return fmt.Errorf("-send must be http or ws, got %q", o.send)
	}
	if o.send == "ws" && o.scenario != "online" && o.scenario != "fanout" {
		return errors.New("-send ws is for online and fanout")
	}
	if o.inflight < 1 {
		return errors.New("-inflight must be positive")
	}
	switch o.scenario {
	case "online", "offline", "server", "floor":
	case "group":
		if o.size < 1 || o.size > o.recipients {
			return errors.New("group: -size must be 1 to -recipients")
		}
	case "fanout":
		if o.conns == 0 {
			o.conns = 3
		}
		if o.conns < 1 || o.conns > maxConnsPerRecipient {
			return fmt.Errorf("fanout: -conns must be 1-%d", maxConnsPerRecipient)
		}
	case "idle":
		if o.conns == 0 {
			o.conns = 1000
		}
		if o.totalConns == 0 {
			o.totalConns = o.conns
		}
		if o.conns < 1 || o.totalConns < o.conns {
			return errors.New("idle: -conns must be positive and -total-conns at least -conns")
		}
	default:
		return fmt.Errorf("unknown scenario %q (want one of %s)", o.scenario, strings.Join(scenarios, ", "))
	}
	if o.scenario == "server" && !o.set["duration"] {
		o.duration = 10 * time.Minute
	}
	switch {
	case o.senders < 1 || o.recipients < 1 || o.messages < 1 || o.sample < 0:
		return errors.New("-senders, -recipients and -messages must be positive")
	case o.page < 1 || o.page > 500:
		return errors.New("-page must be 1-500")
	case o.rate < 0 || o.duration <= 0 || o.drain < 0 || o.window < 0:
		return errors.New("-rate, -duration, -drain and -window must not be negative")
	case o.payload < 8:
		return errors.New("-payload must be at least 8 bytes (it carries the send time)")
	case o.scenario == "group" && o.ephemeral:
		return errors.New("-ephemeral does not go with group: a batch holds stored messages only")
	}
	for _, u := range []string{o.api, o.ws, o.metrics} {
		if u == "" {
			continue
		}
		if err := loopbackOnly(u); err != nil {
			return err
		}
	}
	return nil
}

// loopbackOnly refuses a URL whose host is not a loopback address.
func loopbackOnly(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if u.Scheme == "" || u.Host == "" {
		return fmt.Errorf("%q: want an absolute URL", raw)
	}
	host := u.Hostname()
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%s: routebench only targets loopback addresses", raw)
	}
	return nil
}

// raiseFDLimit raises this process's RLIMIT_NOFILE (inherited by an
// embedded instance's process): both limits to the system's per-process
// maximum (fs.nr_open) when the process may, else the soft limit to the
// hard one.
func raiseFDLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && n > rl.Max {
			if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: n, Max: n}) == nil {
				return n, nil
			}
		}
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return rl.Cur, err
		}
	}
	return rl.Cur, nil
}

// env is what a scenario runs with.
type env struct {
	o       options
	t       target
	fdLimit uint64
	log     io.Writer    // progress
	hc      *http.Client // senders and fetchers
	wsc     *http.Client // WebSocket handshakes (spread source addresses)
	tag     string       // makes this run's URNs unique
	ttl     time.Duration
}

func run(args []string) error {
	o, err := parseFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	fdLimit, err := raiseFDLimit()
	if err != nil {
		return fmt.Errorf("raise RLIMIT_NOFILE: %w", err)
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	if o.memProfile != "" {
		defer func() {
			if err := writeAllocs(o.memProfile); err != nil {
				fmt.Fprintln(os.Stderr, "routebench: memprofile:", err)
			}
		}()
	}
	if o.scenario == "server" {
		return runServer(o)
	}
	e := &env{o: o, fdLimit: fdLimit, log: os.Stdout, ttl: o.duration + o.drain + time.Hour,
		tag: strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + strconv.Itoa(os.Getpid())}
	if o.jsonOut {
		e.log = os.Stderr
	}
	conns := map[string]int{"online": o.recipients, "fanout": o.recipients * o.conns, "group": o.recipients, "idle": o.conns}[o.scenario]
	need := uint64(conns + o.senders + 64)
	if o.embedded && o.scenario != "idle" {
		need += uint64(conns) // the server's end of each connection is in this process too
	}
	if need > fdLimit {
		return fmt.Errorf("%d connections need about %d file descriptors, this process may hold %d: use fewer, or split idle over several processes (-conns each, -total-conns)", conns, need, fdLimit)
	}
	e.t, err = newTarget(o)
	if err != nil {
		return err
	}
	defer e.t.close()
	if o.embedded && len(o.pids) == 0 && e.t.pid != 0 && e.t.pid != os.Getpid() {
		// The server routebench started runs in a process of its own:
		// its CPU per delivered message is measured by default.
		e.o.pids = []proc{{label: "server", pid: e.t.pid}}
	}
	e.hc = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		MaxIdleConns: o.senders * 2, MaxIdleConnsPerHost: o.senders * 2, IdleConnTimeout: time.Minute,
	}}
	e.wsc = wsHTTPClient()
	fmt.Fprintf(e.log, "routebench %s: api %s, ws %s; fd limit %d (RLIMIT_NOFILE raised)\n", o.scenario, e.t.api, e.t.ws, fdLimit)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var s *summary
	switch o.scenario {
	case "online":
		s, err = runDelivery(ctx, e, 1)
	case "fanout":
		s, err = runDelivery(ctx, e, o.conns)
	case "group":
		s, err = runDelivery(ctx, e, 1)
	case "offline":
		s, err = runOffline(ctx, e)
	case "idle":
		s, err = runIdle(ctx, e)
	case "floor":
		s, err = runFloor(ctx, e)
	}
	if err != nil {
		return err
	}
	if o.jsonOut {
		if err := s.writeJSON(os.Stdout); err != nil {
			return err
		}
	} else {
		s.writeText(os.Stdout)
	}
	if s.Accepted == 0 && s.Offered > 0 {
		return fmt.Errorf("none of %d messages was accepted", s.Offered)
	}
	if s.Missing > 0 {
		return fmt.Errorf("%d accepted messages missing (%d deliveries), e.g. %s", s.Missing, s.MissingDeliv, strings.Join(s.MissingIDs, " "))
	}
	return nil
}

func (e *env) newSummary(conns int) *summary {
	return &summary{
		Scenario: e.o.scenario, API: e.t.api, WS: e.t.ws, Embedded: e.o.embedded,
		Recipients: e.o.recipients, ConnsPerRecipient: conns, Connections: e.o.recipients * conns,
		Senders: e.o.senders, PayloadBytes: e.o.payload, Rate: e.o.rate, FDLimit: e.fdLimit, Ephemeral: e.o.ephemeral,
	}
}

// users returns n recipient URNs of this run and their tokens.
func (e *env) users(kind string, n int) (names, tokens []string, err error) {
	names, tokens = make([]string, n), make([]string, n)
	now := time.Now()
	for i := range names {
		names[i] = fmt.Sprintf("urn:bench:user:%s-%s%d", e.tag, kind, i)
		if tokens[i], err = auth.Sign([]byte(e.t.secret), names[i], e.ttl, now); err != nil {
			return nil, nil, err
		}
	}
	return names, tokens, nil
}

// parties returns n users of kind (names and tokens) to send to, and the
// tokens of the -senders senders.
func (e *env) parties(kind string, n int) (names, tokens, senders []string, err error) {
	if names, tokens, err = e.users(kind, n); err != nil {
		return nil, nil, nil, err
	}
	if _, senders, err = e.users("s", e.o.senders); err != nil {
		return nil, nil, nil, err
	}
	return names, tokens, senders, nil
}

// clients returns n API clients, one per token.
func (e *env) clients(tokens []string) []*client.Client {
	cs := make([]*client.Client, len(tokens))
	for i, tok := range tokens {
		cs[i] = &client.Client{APIURL: e.t.api, WSURL: e.t.ws, Token: tok, HTTP: e.hc}
	}
	return cs
}

// writeAllocs writes the allocation profile (every allocation since the
// start, sampled) to path.
func writeAllocs(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
