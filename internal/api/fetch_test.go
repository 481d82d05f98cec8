package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-routing-service/routingservice/internal/envelope"
	"github.com/go-routing-service/routingservice/internal/route"
	"github.com/go-routing-service/routingservice/internal/store"
)

// mount returns the API's router over st, its routing core made with ro,
// with the test's authentication (the token is the subject).
func mount(t *testing.T, o Options, ro route.Options, st testStore) *Router {
	t.Helper()
	if o.MaxBodyBytes == 0 {
		o.MaxBodyBytes, ro.MaxPayloadBytes = 1<<17, 1<<16
	}
	s := newServer(o, ro, st, &publisher{})
	rt := NewRouter(nil, nil)
	s.Mount(rt)
	return rt
}

type fetchPage struct {
	Messages   []*envelope.Envelope `json:"messages"`
	NextCursor string               `json:"next_cursor"`
}

// fetch answers GET /v1/messages for user.
func fetch(t *testing.T, h http.Handler, user, query string) (*httptest.ResponseRecorder, fetchPage) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/v1/messages?"+query, nil)
	req.Header.Set("Authorization", "Bearer "+user)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	var p fetchPage
	if w.Code == http.StatusOK {
		if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
			t.Fatalf("fetch answer is not JSON of a page: %v: %.200s", err, w.Body)
		}
	}
	return w, p
}

// putLarge stores n messages to recipient with payloads of size bytes, each
// starting with its index, and returns them in store order.
func putLarge(t *testing.T, st store.Store, recipient string, n, size int) []*envelope.Envelope {
	t.Helper()
	ids := envelope.NewIDs()
	now := envelope.Now()
	envs := make([]*envelope.Envelope, n)
	for i := range envs {
		p := bytes.Repeat([]byte{byte(i)}, size)
		copy(p, strconv.Itoa(i))
		envs[i] = &envelope.Envelope{ID: ids.New(now), Sender: "urn:sm:user:alice", Recipient: recipient, Payload: p, CreatedAt: now}
	}
	if _, err := st.PutMessages(t.Context(), envs); err != nil {
		t.Fatal(err)
	}
	return envs
}

// A page of large messages ends before the message that would take it past
// api.max_page_bytes, with a next_cursor that goes on from that message:
// following the cursors returns every message once, in order, whole; the
// count limit still ends pages; a message larger than the bound comes
// alone. On every engine.
func TestFetchPagesEndAtTheByteBound(t *testing.T) {
	for _, eng := range engines(t) {
		t.Run(eng.name, func(t *testing.T) {
			st := eng.open(t)
			const bob = "urn:sm:user:bob"
			envs := putLarge(t, st, bob, 20, 60<<10)
			big := putLarge(t, st, bob, 1, 300<<10)[0]
			envs = append(envs, big)
			envs = append(envs, putLarge(t, st, bob, 3, 1000)...)
			h := mount(t, Options{Config: Config{MaxPageBytes: 256 << 10}}, route.Options{}, st)

			for _, tc := range []struct {
				limit int
				sizes []int
			}{
				{500, []int{4, 4, 4, 4, 4, 1, 3}}, // 4 x 60 KiB per 256 KiB; the 300 KiB one alone
				{3, []int{3, 3, 3, 3, 3, 3, 2, 1, 3}},
			} {
				var got []*envelope.Envelope
				var sizes []int
				cursor := ""
				for range 100 {
					w, p := fetch(t, h, bob, "limit="+strconv.Itoa(tc.limit)+"&after="+cursor)
					if w.Code != http.StatusOK {
						t.Fatalf("fetch: %d %s", w.Code, w.Body)
					}
					sizes = append(sizes, len(p.Messages))
					got = append(got, p.Messages...)
					if p.NextCursor == "" {
						break
					}
					cursor = p.NextCursor
				}
				if !slices.Equal(sizes, tc.sizes) {
					t.Errorf("limit %d: page sizes %v, want %v", tc.limit, sizes, tc.sizes)
				}
				if len(got) != len(envs) {
					t.Fatalf("limit %d: %d messages in all, want %d", tc.limit, len(got), len(envs))
				}
				for i, e := range got {
					if e.ID != envs[i].ID || !bytes.Equal(e.Payload, envs[i].Payload) {
						t.Fatalf("limit %d: message %d is %s (%d bytes), want %s (%d bytes): skipped, repeated or cut",
							tc.limit, i, e.ID, len(e.Payload), envs[i].ID, len(envs[i].Payload))
					}
				}
			}
		})
	}
}

// gatedStore holds every PendingWithin call until release is closed,
// reporting each on entered.
type gatedStore struct {
	store.Store
	entered chan string
	release chan struct{}
}

func (g *gatedStore) PendingWithin(ctx context.Context, recipient, cursor string, limit, maxBytes int) (store.Page, error) {
	g.entered <- recipient
	<-g.release
	return g.Store.PendingWithin(ctx, recipient, cursor, limit, maxBytes)
}

// A user may have api.max_fetches_per_user fetches in progress on an
// instance: one more answers 429 rate_limited with Retry-After and reads
// nothing; other users are not held back, and once a fetch ends the user
// may fetch again.
func TestFetchesPerUserBounded(t *testing.T) {
	st := openSQLite(t)
	putLarge(t, st, "urn:sm:user:bob", 3, 10)
	g := &gatedStore{Store: st, entered: make(chan string, 8), release: make(chan struct{})}
	h := mount(t, Options{Config: Config{MaxFetchesPerUser: 2}}, route.Options{}, g)

	var wg sync.WaitGroup
	codes := make(chan int, 2)
	for range 2 {
		wg.Go(func() {
			w, _ := fetch(t, h, "urn:sm:user:bob", "")
			codes <- w.Code
		})
	}
	for range 2 {
		<-g.entered
	}
	w, _ := fetch(t, h, "urn:sm:user:bob", "")
	if w.Code != http.StatusTooManyRequests || !bytes.Contains(w.Body.Bytes(), []byte(`"code":"rate_limited"`)) || w.Header().Get("Retry-After") != "1" {
		t.Fatalf("third fetch at once: %d %s (Retry-After %q), want 429 rate_limited with Retry-After 1", w.Code, w.Body, w.Header().Get("Retry-After"))
	}
	// Another user is not held back.
	carol := make(chan int, 1)
	go func() {
		w, _ := fetch(t, h, "urn:sm:user:carol", "")
		carol <- w.Code
	}()
	if who := <-g.entered; who != "urn:sm:user:carol" {
		t.Fatalf("store read for %s, want carol", who)
	}
	close(g.release)
	wg.Wait()
	for range 2 {
		if c := <-codes; c != http.StatusOK {
			t.Errorf("held fetch answered %d, want 200", c)
		}
	}
	if c := <-carol; c != http.StatusOK {
		t.Errorf("carol's fetch answered %d, want 200", c)
	}
	if w, p := fetch(t, h, "urn:sm:user:bob", ""); w.Code != http.StatusOK || len(p.Messages) != 3 {
		t.Fatalf("fetch after the others ended: %d, %d messages; want 200 with 3", w.Code, len(p.Messages))
	}
}

// writeWatch counts the answers writing their body (inside Write) and
// the answers refused, for a test to wait on without sleeping.
type writeWatch struct {
	mu      sync.Mutex
	cond    *sync.Cond
	writing int
	refused int
}

func newWriteWatch() *writeWatch {
	w := &writeWatch{}
	w.cond = sync.NewCond(&w.mu)
	return w
}

func (ww *writeWatch) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&watchedWriter{ResponseWriter: w, ww: ww}, r)
	})
}

// waitFor blocks until writing and refused answers are in progress or done.
func (ww *writeWatch) waitFor(writing, refused int) {
	ww.mu.Lock()
	defer ww.mu.Unlock()
	for ww.writing < writing || ww.refused < refused {
		ww.cond.Wait()
	}
}

type watchedWriter struct {
	http.ResponseWriter
	ww     *writeWatch
	status int
	inBody bool
}

func (w *watchedWriter) WriteHeader(code int) {
	w.status = code
	if code == http.StatusTooManyRequests {
		w.ww.mu.Lock()
		w.ww.refused++
		w.ww.cond.Broadcast()
		w.ww.mu.Unlock()
	}
	w.ResponseWriter.WriteHeader(code)
}

// Write counts a 200 answer as writing from its first body write on: a
// client that reads nothing leaves it blocked there, holding what it holds.
func (w *watchedWriter) Write(b []byte) (int, error) {
	if !w.inBody && w.status == http.StatusOK {
		w.inBody = true
		w.ww.mu.Lock()
		w.ww.writing++
		w.ww.cond.Broadcast()
		w.ww.mu.Unlock()
	}
	return w.ResponseWriter.Write(b)
}

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// smallBuffers makes a socket's kernel buffer small, so that a client that
// reads nothing stops the server's writes after a few KiB instead of the
// megabytes loopback buffers take.
func smallBuffers(opt int) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, opt, 4096) })
		if err != nil {
			return err
		}
		return serr
	}
}

// smallSendBuffers is a listener whose connections have small send buffers.
type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096)
	}
	return c, nil
}

// Sixteen requests for a queue of 500 messages of 60 KB, from clients that
// send the request over TCP and never read the answer, hold the server's
// heap to less than 64 MB more than before them (a whole 500-message page
// built, encoded and copied took about 70 MB each), whether the per-user
// bound on fetches lets all sixteen in or refuses all but two: a page holds
// at most api.max_page_bytes of payload and is encoded into a bounded buffer
// one message at a time.
func TestFetchHeldUnreadKeepsHeapBounded(t *testing.T) {
	st := openSQLite(t)
	const bob = "urn:sm:user:bob"
	putLarge(t, st, bob, 500, 60_000)
	for _, tc := range []struct {
		name             string
		fetchesPerUser   int
		writing, refused int
	}{
		{"every request let in", 16, 16, 0},
		{"two fetches per user", 2, 2, 14},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ww := newWriteWatch()
			srv := httptest.NewUnstartedServer(ww.wrap(mount(t, Options{Config: Config{MaxPageBytes: 1 << 20, MaxFetchesPerUser: tc.fetchesPerUser}}, route.Options{}, st)))
			srv.Listener = smallSendBuffers{srv.Listener}
			srv.Config.WriteTimeout = 5 * time.Minute // held until the test ends
			srv.Start()
			var conns []net.Conn
			defer func() {
				for _, c := range conns {
					c.Close()
				}
				srv.Close()
			}()
			before := heapInUse()
			d := net.Dialer{Control: smallBuffers(syscall.SO_RCVBUF)}
			for range 16 {
				c, err := d.DialContext(t.Context(), "tcp", srv.Listener.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				conns = append(conns, c)
				fmt.Fprintf(c, "GET /v1/messages?limit=500 HTTP/1.1\r\nHost: routing\r\nAuthorization: Bearer %s\r\n\r\n", bob)
			}
			ww.waitFor(tc.writing, tc.refused)
			held := heapInUse()
			growth := int64(held) - int64(before)
			t.Logf("heap %d MB before, %d MB with %d answers held unread (%d refused): growth %d MB",
				before>>20, held>>20, tc.writing, tc.refused, growth>>20)
			if growth >= 64<<20 {
				t.Fatalf("heap grew by %d MB with 16 unread fetches, want under 64 MB", growth>>20)
			}
		})
	}
}
