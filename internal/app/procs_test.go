package app_test

import (
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"
)

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// server is a private server process on a loopback port, killed when the
// test ends. Start and Kill can repeat (same port, same data directory).
type server struct {
	t    *testing.T
	name string
	port int
	args []string
	cmd  *exec.Cmd
	done chan struct{}
}

// privateServer prepares (but does not start) binary with args on port.
func privateServer(t *testing.T, binary string, port int, args ...string) *server {
	t.Helper()
	if _, err := exec.LookPath(binary); err != nil {
		t.Fatalf("%s is needed for this fault test: %v", binary, err)
	}
	s := &server{t: t, name: binary, port: port, args: args}
	t.Cleanup(s.Kill)
	return s
}

// startNATS starts a private nats-server with JetStream.
func startNATS(t *testing.T) *server {
	port := freePort(t)
	s := privateServer(t, "nats-server", port, "-js", "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-sd", t.TempDir())
	s.Start()
	return s
}

// startRedis starts a private redis-server that keeps nothing on disk, so
// that a restart comes back empty.
func startRedis(t *testing.T) *server {
	port := freePort(t)
	s := privateServer(t, "redis-server", port, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", t.TempDir())
	s.Start()
	return s
}

func (s *server) Addr() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// Start runs the server and waits until it accepts connections.
func (s *server) Start() {
	s.t.Helper()
	cmd := exec.Command(s.name, s.args...)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start %s: %v", s.name, err)
	}
	s.cmd, s.done = cmd, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(s.done)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.Addr(), time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-s.done:
			s.t.Fatalf("%s exited at start", s.name)
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s does not accept connections on %s", s.name, s.Addr())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill stops the server with SIGKILL and waits for it to exit.
func (s *server) Kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// proxy is a TCP proxy on a loopback port in front of target; Cut closes
// every connection through it and refuses new ones until Restore.
type proxy struct {
	t      *testing.T
	target string
	ln     net.Listener

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) Addr() string { return p.ln.Addr().String() }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", p.target, 2*time.Second)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

func (p *proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// Cut closes every open connection and refuses new ones.
func (p *proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
}

// Restore lets connections through again.
func (p *proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}
