package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/go-routing-service/routingservice/internal/store/groupcommit"
)

// The floor scenario measures what this machine allows at best for
// answers that are durable: an HTTP server in this process answers each
// POST /v1/messages with 202 only once the request's body is appended to
// a file and fsynced, the fsync shared by every request waiting at the
// time (group commit), and nothing else: no store, no routing, no
// delivery. The senders are the same as online's (-senders, -rate,
// -duration, -payload), so that the service's figures can be read against
// it. -sync=false leaves the fsync out: the bound without durability.

// floorMaxBody bounds a request body the floor server reads.
const floorMaxBody = 1 << 20

// floorMaxBatch caps the bodies one group commit of the floor writes.
const floorMaxBatch = 4096

// floorServer is the floor scenario's server. Its writes go through the
// stores' group-commit writer.
type floorServer struct {
	sync    bool
	path    string // the file written
	f       *os.File
	w       *groupcommit.Writer[[]byte, struct{}]
	buf     []byte // commit's reusable buffer (writer goroutine only)
	srv     *http.Server
	seq     atomic.Int64
	commits atomic.Int64
	items   atomic.Int64
}

// startFloor starts the floor server on a loopback port, writing to a file
// in a new temporary directory, and returns it as a target.
func startFloor(o options) (target, error) {
	dir, err := os.MkdirTemp("", "routebench-floor-")
	if err != nil {
		return target{}, err
	}
	f, err := os.OpenFile(filepath.Join(dir, "log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		os.RemoveAll(dir)
		return target{}, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Close()
		os.RemoveAll(dir)
		return target{}, err
	}
	fs := &floorServer{sync: o.sync, path: f.Name(), f: f}
	fs.w = groupcommit.New(floorMaxBatch, fs.commit, slog.Default())
	fs.srv = &http.Server{Handler: fs, ReadHeaderTimeout: 10 * time.Second}
	go fs.srv.Serve(ln)
	return target{
		api: "http://" + ln.Addr().String(), ws: "ws://" + ln.Addr().String(), secret: "floor", pid: os.Getpid(),
		close: func() {
			fs.srv.Close()
			fs.w.Close()
			f.Close()
			os.RemoveAll(dir)
		},
		floor: fs,
	}, nil
}

// ServeHTTP answers POST /v1/messages with 202 and an id once the body is
// written (and fsynced, with sync).
func (fs *floorServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/messages" {
		http.NotFound(w, r)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, floorMaxBody))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if err := fs.w.Submit(r.Context(), [][]byte{body}, nil); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	fmt.Fprintf(w, `{"id":"floor-%d","created_at":%q}`, fs.seq.Add(1), time.Now().UTC().Format(time.RFC3339Nano))
}

// commit is the group-commit writer's CommitFunc: it appends the bodies
// (each after its length) in one write and fsyncs the file when sync is on.
func (fs *floorServer) commit(bodies [][]byte, _ []struct{}) error {
	fs.buf = fs.buf[:0]
	for _, b := range bodies {
		fs.buf = binary.AppendUvarint(fs.buf, uint64(len(b)))
		fs.buf = append(fs.buf, b...)
	}
	_, err := fs.f.Write(fs.buf)
	if err == nil && fs.sync {
		err = fs.f.Sync()
	}
	fs.commits.Add(1)
	fs.items.Add(int64(len(bodies)))
	return err
}

// floorStats is the floor scenario's own part of the summary.
type floorStats struct {
	Fsync          bool    `json:"fsync"`
	Commits        int64   `json:"commits"`
	ItemsPerCommit float64 `json:"items_per_commit"`
}

// runFloor is the floor scenario: -senders send to the floor server for
// -duration, as online's senders do.
func runFloor(ctx context.Context, e *env) (*summary, error) {
	o := e.o
	names := make([]string, o.recipients)
	for i := range names {
		names[i] = "urn:bench:user:floor-" + strconv.Itoa(i)
	}
	_, stoks, err := e.users("s", o.senders)
	if err != nil {
		return nil, err
	}
	ck := newChecker(o.recipients, 0)
	start := time.Now()
	l := &load{senders: e.clients(stoks), names: names, targets: allTargets(o.recipients),
		payload: o.payload, rate: o.rate, until: start.Add(o.duration), ck: ck}
	sr := rater{lastT: start}
	stopProgress := progress(e.log, start, func() string {
		acc := ck.accepted.Load()
		return fmt.Sprintf("sent %d  accepted %d  %.0f accepted/s  errors %d", l.offered.Load(), acc, sr.rate(acc), l.errs.Total())
	})
	sendDur := l.run(ctx)
	stopProgress()

	s := e.newSummary(0)
	s.Offered = l.offered.Load()
	s.fill(ck, &l.errs, &statusCounts{}, &l.sendLat, start, sendDur)
	fs := e.t.floor
	st := &floorStats{Fsync: fs.sync, Commits: fs.commits.Load()}
	if st.Commits > 0 {
		st.ItemsPerCommit = float64(fs.items.Load()) / float64(st.Commits)
	}
	s.Floor = st
	return s, nil
}
