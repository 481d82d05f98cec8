package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"
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

// floorServer is the floor scenario's server.
type floorServer struct {
	sync    bool
	path    string // the file written
	f       *os.File
	reqs    chan *floorReq
	srv     *http.Server
	ln      net.Listener
	seq     atomic.Int64
	commits atomic.Int64
	items   atomic.Int64
	quit    chan struct{} // closed to stop the writer
	done    chan struct{} // closed when the writer has returned
}

// floorReq is one body waiting for the writer.
type floorReq struct {
	body []byte
	err  chan error // buffered (1)
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
	fs := &floorServer{sync: o.sync, path: f.Name(), f: f, reqs: make(chan *floorReq), ln: ln,
		quit: make(chan struct{}), done: make(chan struct{})}
	fs.srv = &http.Server{Handler: fs, ReadHeaderTimeout: 10 * time.Second}
	go fs.write()
	go fs.srv.Serve(ln)
	return target{
		api: "http://" + ln.Addr().String(), ws: "ws://" + ln.Addr().String(), secret: "floor", pid: os.Getpid(),
		close: func() {
			fs.srv.Close()
			close(fs.quit)
			<-fs.done
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
	req := &floorReq{body: body, err: make(chan error, 1)}
	select {
	case fs.reqs <- req:
	case <-fs.quit:
		http.Error(w, "closed", http.StatusServiceUnavailable)
		return
	case <-r.Context().Done():
		return
	}
	if err := <-req.err; err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	fmt.Fprintf(w, `{"id":"floor-%d","created_at":%q}`, fs.seq.Add(1), time.Now().UTC().Format(time.RFC3339Nano))
}

// write is the writer goroutine: it takes a request, then every request
// already waiting, appends their bodies (each after its length) in one
// write, fsyncs the file when sync is on, and answers them all.
func (fs *floorServer) write() {
	defer close(fs.done)
	var buf []byte
	var batch []*floorReq
	for {
		var first *floorReq
		select {
		case first = <-fs.reqs:
		case <-fs.quit:
			return
		}
		batch = append(batch[:0], first)
	collect:
		for {
			select {
			case r := <-fs.reqs:
				batch = append(batch, r)
			default:
				break collect
			}
		}
		buf = buf[:0]
		for _, r := range batch {
			buf = binary.AppendUvarint(buf, uint64(len(r.body)))
			buf = append(buf, r.body...)
		}
		_, err := fs.f.Write(buf)
		if err == nil && fs.sync {
			err = fs.f.Sync()
		}
		fs.commits.Add(1)
		fs.items.Add(int64(len(batch)))
		for _, r := range batch {
			r.err <- err
		}
		clear(batch)
	}
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
