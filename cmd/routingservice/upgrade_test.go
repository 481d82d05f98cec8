package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/go-routing-service/routingservice/pkg/client"
)

// lastRelease is the commit of the last release, 0.2.0 (CHANGELOG.md
// "[0.2.0]"): the version a rolling upgrade starts from.
const lastRelease = "c711c32"

// lastReleaseSchema is the last PostgreSQL migration lastRelease knows.
const lastReleaseSchema = 6

// buildRelease builds cmd/routingservice of commit from this repository's
// history into a temporary directory (sharing the module and build
// caches) and returns the binary. It skips the test when the history
// lacks the commit.
func buildRelease(t *testing.T, commit string) string {
	t.Helper()
	root, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Skipf("not in a git work tree, cannot build release %s: %v", commit, err)
	}
	repo := strings.TrimSpace(string(root))
	if err := exec.Command("git", "-C", repo, "cat-file", "-e", commit+"^{commit}").Run(); err != nil {
		t.Skipf("the history lacks commit %s (release 0.2.0; a shallow clone?): %v", commit, err)
	}
	src := t.TempDir()
	archive := exec.Command("sh", "-c", `git -C "$1" archive "$2" | tar -x -C "$3"`, "sh", repo, commit, src)
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("git archive %s: %v\n%s", commit, err, out)
	}
	bin := filepath.Join(t.TempDir(), "routingservice-"+commit)
	start := time.Now()
	// Built as this test binary was (with -race or not), the release
	// reuses the packages compiled for it from the build cache: its
	// dependencies are the same.
	args := []string{"build", "-o", bin}
	if raceEnabled() {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "./cmd/routingservice")...)
	build.Dir = src
	build.Env = append(os.Environ(), "GOFLAGS=", "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build release %s: %v\n%s", commit, err, out)
	}
	t.Logf("built release %s in %s", commit, time.Since(start).Round(100*time.Millisecond))
	return bin
}

// raceEnabled reports whether this test binary was built with -race.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// build is a build of the service: a binary and the environment that
// makes it run `serve`.
type build struct {
	name string
	bin  string
	env  []string
}

// underTest is this build: the test binary, which runs the service's
// command line when ROUTINGSERVICE_CHILD is set.
func underTest() build {
	return build{name: "0.3.0", bin: os.Args[0], env: []string{"ROUTINGSERVICE_CHILD=1"}}
}

// upgradeInstance is one running instance of a rolling upgrade.
type upgradeInstance struct {
	id      string
	version string
	roles   string
	cmd     *exec.Cmd
	api     string
	ws      string
	ops     string
	exited  chan error
	stderr  *lockedLines
}

// lockedLines keeps a process's last lines of output.
type lockedLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *lockedLines) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) == 200 {
		l.lines = l.lines[1:]
	}
	l.lines = append(l.lines, s)
}

func (l *lockedLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// startVersion runs `serve` of v as instance id with roles and the shared
// configuration (YAML every version accepts), and waits until it is ready.
func startVersion(t *testing.T, v build, id, roles, shared string, env ...string) *upgradeInstance {
	t.Helper()
	in, err := launchVersion(t, v, id, roles, shared, env...)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if resp, err := http.Get(in.ops + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return in
			}
		}
		select {
		case err := <-in.exited:
			t.Fatalf("%s (%s) exited before ready: %v\n%s", id, v.name, err, in.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s (%s) not ready within 60s\n%s", id, v.name, in.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// launchVersion starts the process without waiting for it.
func launchVersion(t *testing.T, v build, id, roles, shared string, env ...string) (*upgradeInstance, error) {
	t.Helper()
	api, ws, ops := freePort(t), freePort(t), freePort(t)
	dir := t.TempDir()
	cfg := fmt.Sprintf(`%sinstance_id: %s
roles: %s
data_dir: %q
log: {level: warn}
admin: {socket: "-"}
api: {listen: %q, rate_limit: 0}
realtime: {listen: %q, max_conns_per_ip: 0, connect_rate_per_ip: 0, connect_rate_per_user: 0}
ops: {listen: %q}
`, shared, id, roles, filepath.Join(dir, "data"), api, ws, ops)
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(v.bin, "serve", "--config", path)
	cmd.Env = append(append(append(os.Environ(), "JWT_SECRET="+testSecret), v.env...), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = nil
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	in := &upgradeInstance{id: id, version: v.name, roles: roles, cmd: cmd, api: "http://" + api, ws: "ws://" + ws, ops: "http://" + ops,
		exited: make(chan error, 1), stderr: &lockedLines{}}
	go func() {
		s := bufio.NewScanner(stderr)
		for s.Scan() {
			in.stderr.add(s.Text())
			if testing.Verbose() {
				t.Logf("%s (%s): %s", id, v.name, s.Text())
			}
		}
		in.exited <- cmd.Wait()
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return in, nil
}

// stop sends SIGTERM and waits for a clean exit.
func (in *upgradeInstance) stop(t *testing.T) {
	t.Helper()
	if err := in.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM %s: %v", in.id, err)
	}
	select {
	case err := <-in.exited:
		if err != nil {
			t.Fatalf("%s (%s) after SIGTERM: %v\n%s", in.id, in.version, err, in.stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s (%s) did not exit within 30s of SIGTERM", in.id, in.version)
	}
}

// rotation is what a load balancer sends traffic to: the API and
// WebSocket addresses of the instances in service, picked round robin.
type rotation struct {
	mu  sync.Mutex
	api []*upgradeInstance
	ws  []*upgradeInstance
	n   int
}

func (r *rotation) add(in *upgradeInstance) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if strings.Contains(in.roles, "api") {
		r.api = append(r.api, in)
	}
	if strings.Contains(in.roles, "realtime") {
		r.ws = append(r.ws, in)
	}
}

func (r *rotation) remove(in *upgradeInstance) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.api = slices.DeleteFunc(r.api, func(x *upgradeInstance) bool { return x == in })
	r.ws = slices.DeleteFunc(r.ws, func(x *upgradeInstance) bool { return x == in })
}

func (r *rotation) pick(ws bool) *upgradeInstance {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	list := r.api
	if ws {
		list = r.ws
	}
	return list[r.n%len(list)]
}

// accepted is a message answered 202.
type accepted struct {
	recipient string
	via       *upgradeInstance
	at        time.Time
}

// receipt is one frame of a message received by its recipient.
type receipt struct {
	conn int              // the recipient's connection, counted from 1
	via  *upgradeInstance // the realtime instance of the connection
	at   time.Time
}

// ledger records what was accepted and what was received.
type ledger struct {
	mu       sync.Mutex
	accepted map[string]accepted
	received map[string][]receipt
	wrong    []string // frames that reached a recipient not their own
	retries  int      // send attempts that failed and were retried
	failed   []string // sends never answered 202
}

func (l *ledger) counts() (acc, recv int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.accepted), len(l.received)
}

// window is a span of time around one instance's replacement.
type window struct {
	what       string
	from, till time.Time
}

// A rolling upgrade from the last release to this build, without
// downtime: instances of both versions share NATS, PostgreSQL and Redis
// while the old ones are replaced one at a time (removed from the load
// balancer's rotation, SIGTERM, exit, the new one started and put in
// rotation), api and pipeline instances first, then realtime ones, under a
// steady stream of sends (100 a second, each with an idempotency key,
// retried on another instance when a send gets no answer) to recipients
// connected over WebSocket (reconnecting to another instance when theirs
// closes). The first new instance migrates the shared schema forward while
// the old ones run on it. Every message answered 202 arrives; a message
// arrives twice only if it was in flight across a replacement, and only
// on a later connection or while the replacement happened. After the
// upgrade, the old release refuses to start on the migrated schema.
func TestRollingUpgradeFromLastRelease(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the last release and starts child processes")
	}
	natsURL := os.Getenv("ROUTING_TEST_NATS_URL")
	if natsURL == "" {
		t.Skip("set ROUTING_TEST_NATS_URL to run the rolling upgrade test")
	}
	pgURL, redisAddr, schema, keyPrefix := sharedEngines(t)
	oldBin := buildRelease(t, lastRelease)
	old := build{name: "0.2.0", bin: oldBin}
	cur := underTest()
	p := randomName("upg")
	deleteStreams(t, natsURL, p)
	// Keys both versions accept (0.2.0 refuses unknown keys). Without the
	// local hand-off every routing event crosses the bus, so pipelines of
	// each version route what the other version's API accepted.
	shared := fmt.Sprintf(`run_mode: local
shutdown_timeout: 10s
store: {type: postgres, postgres_schema: %s}
presence: {type: redis, ttl: 3s, heartbeat: 1s, redis: {addr: %q, key_prefix: %q}}
bus: {type: nats, min_backoff: 100ms, max_backoff: 500ms, nats: {url: %q, subject_prefix: %s}}
pipeline: {reroute_after: 5s, local_handoff: false}
push: {webpush: {enabled: false}}
`, schema, redisAddr, keyPrefix, natsURL, p)
	dbEnv := "DATABASE_URL=" + pgURL
	schemaVersion := func() int {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, pgURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		var v int
		if err := conn.QueryRow(ctx, "SELECT max(version) FROM "+pgx.Identifier{schema, "schema_version"}.Sanitize()).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}

	// The old release: two api+pipeline instances, two realtime ones.
	rot := &rotation{}
	var running []*upgradeInstance
	for _, s := range []struct{ id, roles string }{
		{"a1", "[api, pipeline]"}, {"a2", "[api, pipeline]"}, {"c1", "[realtime]"}, {"c2", "[realtime]"},
	} {
		in := startVersion(t, old, s.id+"-old", s.roles, shared, dbEnv)
		rot.add(in)
		running = append(running, in)
	}
	if v := schemaVersion(); v != lastReleaseSchema {
		t.Fatalf("the last release made schema version %d, want %d", v, lastReleaseSchema)
	}

	led := &ledger{accepted: map[string]accepted{}, received: map[string][]receipt{}}
	recipients := []string{"urn:sm:user:r0", "urn:sm:user:r1", "urn:sm:user:r2", "urn:sm:user:r3"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for _, r := range recipients {
		token := testToken(t, r)
		wg.Go(func() { receive(ctx, rot, led, token, r) })
	}

	// The sender: 100 sends a second, each in its own goroutine.
	httpc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 5 * time.Second}}
	defer httpc.CloseIdleConnections()
	token := testToken(t, "urn:sm:user:alice")
	sendCtx, stopSending := context.WithCancel(ctx)
	var sends sync.WaitGroup
	senderDone := make(chan struct{})
	go func() {
		defer close(senderDone)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-sendCtx.Done():
				return
			case <-tick.C:
			}
			sends.Go(func() { send(ctx, rot, led, httpc, token, fmt.Sprintf("%s-%d", p, i), recipients[i%len(recipients)]) })
		}
	}()
	defer func() { stopSending(); <-senderDone; sends.Wait() }()
	// progress waits until n more messages were accepted and received.
	progress := func(what string, n int) {
		t.Helper()
		acc0, recv0 := led.counts()
		deadline := time.Now().Add(30 * time.Second)
		for {
			acc, recv := led.counts()
			if acc >= acc0+n && recv >= recv0+n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d accepted and %d received within 30s, want %d more of each", what, acc-acc0, recv-recv0, n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	progress("the old release", 200)

	// Replace each old instance by a new one, api and pipeline first. A
	// replacement's window runs from a second before the SIGTERM to a
	// second after the new instance is ready; between windows the stream
	// runs on (300 messages) with nothing restarting.
	var windows []window
	var migratedAt, pipelinesNewAt time.Time
	for i, in := range slices.Clone(running) {
		rot.remove(in)
		sigterm := time.Now()
		in.stop(t)
		stopped := time.Now()
		id := strings.TrimSuffix(in.id, "-old") + "-new"
		nin := startVersion(t, cur, id, in.roles, shared, dbEnv)
		ready := time.Now()
		rot.add(nin)
		running[i] = nin
		windows = append(windows, window{what: in.id + " -> " + id, from: sigterm.Add(-time.Second), till: ready.Add(time.Second)})
		t.Logf("%s (%s): stopped %s after SIGTERM; %s (%s) ready %s later",
			in.id, in.version, stopped.Sub(sigterm).Round(time.Millisecond), id, nin.version, ready.Sub(stopped).Round(time.Millisecond))
		if migratedAt.IsZero() {
			if v := schemaVersion(); v <= lastReleaseSchema {
				t.Fatalf("the new version left the schema at version %d", v)
			}
			migratedAt = time.Now()
		}
		if pipelinesNewAt.IsZero() && !slices.ContainsFunc(running, func(r *upgradeInstance) bool {
			return r.version == old.name && strings.Contains(r.roles, "pipeline")
		}) {
			pipelinesNewAt = time.Now()
		}
		progress("after replacing "+in.id, 300)
	}
	stopSending()
	<-senderDone
	sends.Wait()

	// Every accepted message arrives.
	deadline := time.Now().Add(30 * time.Second)
	var lost []string
	for {
		lost = lost[:0]
		led.mu.Lock()
		for id := range led.accepted {
			if len(led.received[id]) == 0 {
				lost = append(lost, id)
			}
		}
		led.mu.Unlock()
		if len(lost) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	wg.Wait()

	led.mu.Lock()
	defer led.mu.Unlock()
	// The mixed phases did work: old API and pipeline instances on the
	// migrated schema, old realtime instances delivering what only new
	// pipelines routed.
	var oldAfterMigration, oldDeliveredNew int
	byVersion := map[string]int{}
	for id, a := range led.accepted {
		byVersion[a.via.version]++
		if a.via.version == old.name && a.at.After(migratedAt) {
			oldAfterMigration++
		}
		if rs := led.received[id]; len(rs) > 0 && rs[0].via.version == old.name && a.at.After(pipelinesNewAt) {
			oldDeliveredNew++
		}
	}
	var dups, inWindow int
	dupsIn := make([]int, len(windows))
	for id, a := range led.accepted {
		if inWindows(windows, a.at) {
			inWindow++
		}
		rs := led.received[id]
		if len(rs) < 2 {
			continue
		}
		dups += len(rs) - 1
		for i, w := range windows {
			if inWindows([]window{w}, rs[0].at) || inWindows([]window{w}, a.at) {
				dupsIn[i] += len(rs) - 1
				break
			}
		}
		for _, r := range rs[1:] {
			if r.conn == rs[0].conn && !inWindows(windows, rs[0].at) {
				t.Errorf("message %s received twice on connection %d of %s, outside any replacement", id, r.conn, a.recipient)
			}
		}
		if !inWindows(windows, a.at) && !inWindows(windows, rs[0].at) {
			t.Errorf("message %s (accepted %s, first received %s) received %d times, but it was not in flight across a replacement",
				id, a.at.Format(time.StampMilli), rs[0].at.Format(time.StampMilli), len(rs))
		}
	}
	t.Logf("accepted %d (%v by version), %d by the old release after the schema was migrated; %d routed by new pipelines delivered by the old release; %d send attempts retried; %d received twice or more (%d extra frames), of %d accepted during the %d replacements",
		len(led.accepted), byVersion, oldAfterMigration, oldDeliveredNew, led.retries, countDups(led.received), dups, inWindow, len(windows))
	for i, w := range windows {
		t.Logf("replacement %s: %d duplicate frames of messages in flight across it", w.what, dupsIn[i])
	}
	if len(lost) > 0 {
		t.Errorf("%d of %d accepted messages never arrived, e.g. %v", len(lost), len(led.accepted), lost[:min(len(lost), 5)])
	}
	if len(led.failed) > 0 {
		t.Errorf("%d sends never answered 202 (every send had another instance to go to), e.g. %v", len(led.failed), led.failed[:min(len(led.failed), 3)])
	}
	if len(led.wrong) > 0 {
		t.Errorf("frames delivered to the wrong recipient: %v", led.wrong)
	}
	if oldAfterMigration == 0 {
		t.Error("no message was accepted by an old instance after the schema was migrated: the mixed phase was not tested")
	}
	if oldDeliveredNew == 0 {
		t.Error("no message routed by the new pipelines was delivered by an old realtime instance: the mixed phase was not tested")
	}
	if dups > inWindow {
		t.Errorf("%d duplicate frames, more than the %d messages in flight across replacements", dups, inWindow)
	}

	// Rolling back by starting the old release again is refused: the
	// schema is newer than it knows.
	oldAgain, err := launchVersion(t, old, "a1-rollback", "[api, pipeline]", shared, dbEnv)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-oldAgain.exited:
		if err == nil || !strings.Contains(oldAgain.stderr.String(), "newer than this program's") {
			t.Errorf("the old release on the migrated schema: exit %v, want a refusal naming the newer schema\n%s", err, oldAgain.stderr)
		}
	case <-time.After(30 * time.Second):
		t.Error("the old release started on the migrated schema")
	}
	for _, in := range running {
		in.stop(t)
	}
}

func inWindows(ws []window, at time.Time) bool {
	return slices.ContainsFunc(ws, func(w window) bool { return !at.Before(w.from) && !at.After(w.till) })
}

func countDups(received map[string][]receipt) int {
	var n int
	for _, rs := range received {
		if len(rs) > 1 {
			n++
		}
	}
	return n
}

// send sends one message with an idempotency key through the rotation,
// retrying on the next instance until it is answered 202 (or 20 s pass).
func send(ctx context.Context, rot *rotation, led *ledger, httpc *http.Client, token, key, recipient string) {
	deadline := time.Now().Add(20 * time.Second)
	for attempt := 0; ; attempt++ {
		in := rot.pick(false)
		c := &client.Client{APIURL: in.api, Token: token, HTTP: httpc}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		acc, err := c.Send(sctx, client.Message{Recipient: recipient, Payload: []byte(key), IdempotencyKey: key})
		cancel()
		if err == nil {
			led.mu.Lock()
			if _, seen := led.accepted[acc.ID]; !seen {
				led.accepted[acc.ID] = accepted{recipient: recipient, via: in, at: time.Now()}
			}
			led.mu.Unlock()
			return
		}
		var ae *client.Error
		if ctx.Err() != nil || time.Now().After(deadline) || (errors.As(err, &ae) && ae.Status < 500) {
			led.mu.Lock()
			led.failed = append(led.failed, fmt.Sprintf("%s via %s: %v", key, in.id, err))
			led.mu.Unlock()
			return
		}
		led.mu.Lock()
		led.retries++
		led.mu.Unlock()
		time.Sleep(min(time.Duration(attempt+1)*50*time.Millisecond, 500*time.Millisecond))
	}
}

// receive keeps recipient connected through the rotation until ctx ends,
// recording and acknowledging every frame.
func receive(ctx context.Context, rot *rotation, led *ledger, token, recipient string) {
	for conn := 1; ctx.Err() == nil; conn++ {
		in := rot.pick(true)
		c := &client.Client{WSURL: in.ws, Token: token}
		ws, err := c.Connect(ctx)
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		for {
			env, err := ws.Next(ctx)
			if err != nil {
				break
			}
			led.mu.Lock()
			led.received[env.ID] = append(led.received[env.ID], receipt{conn: conn, via: in, at: time.Now()})
			if env.Recipient != recipient {
				led.wrong = append(led.wrong, env.ID+" to "+recipient)
			}
			led.mu.Unlock()
			if err := ws.Ack(ctx, env.ID); err != nil {
				break
			}
		}
		ws.Close()
	}
}
