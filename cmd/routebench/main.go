// Command routebench measures the routing service end to end: senders POST
// messages to online recipients, who receive them over WebSocket and ack
// them; it reports throughput and send-to-receipt latency.
//
//	routebench -embedded -duration 10s            # starts an instance in process (temp data dir)
//	routebench -api http://127.0.0.1:8082 -ws ws://127.0.0.1:8085   # a running service (JWT_SECRET; set api.rate_limit: 0 there)
//
// It only targets loopback addresses and stops after -duration.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-routing-service/routingservice/internal/app"
	"github.com/go-routing-service/routingservice/internal/auth"
	"github.com/go-routing-service/routingservice/internal/config"
	"github.com/go-routing-service/routingservice/pkg/client"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "routebench:", err)
		os.Exit(1)
	}
}

func run() error {
	apiURL := flag.String("api", "http://127.0.0.1:8082", "API base URL (loopback only)")
	wsURL := flag.String("ws", "ws://127.0.0.1:8085", "WebSocket base URL (loopback only)")
	embedded := flag.Bool("embedded", false, "start an instance in process on a temporary data dir")
	configPath := flag.String("config", "", "with -embedded: config file for the instance")
	senders := flag.Int("senders", 32, "concurrent sending goroutines")
	recipients := flag.Int("recipients", 1, "online recipients (one WebSocket each)")
	rate := flag.Float64("rate", 0, "target messages per second in total (0: as fast as possible)")
	duration := flag.Duration("duration", 10*time.Second, "how long to send")
	payload := flag.Int("payload", 256, "payload bytes")
	flag.Parse()

	secret := os.Getenv("JWT_SECRET")
	if *embedded {
		cfg, err := config.Load(*configPath)
		if err != nil {
			return err
		}
		dir, err := os.MkdirTemp("", "routebench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		cfg.DataDir = dir
		cfg.Store.SQLitePath = dir + "/routing.db"
		cfg.API.Listen, cfg.Realtime.Listen = "127.0.0.1:0", "127.0.0.1:0"
		cfg.Push.WebPush.Enabled = false
		cfg.API.RateLimit = 0 // the senders are load, not abuse
		ctx, cancel := context.WithCancel(context.Background())
		a, err := app.New(ctx, cfg, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
		if err != nil {
			cancel()
			return err
		}
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		defer func() { cancel(); <-done }()
		*apiURL, *wsURL, secret = "http://"+a.APIAddr(), "ws://"+a.WSAddr(), cfg.JWTSecret
	}
	if secret == "" {
		secret = config.DevJWTSecret
	}
	for _, u := range []string{*apiURL, *wsURL} {
		if err := loopbackOnly(u); err != nil {
			return err
		}
	}
	if *payload < 8 {
		return errors.New("-payload must be at least 8 bytes (it carries the send time)")
	}
	tr := &http.Transport{MaxIdleConns: *senders * 2, MaxIdleConnsPerHost: *senders * 2, IdleConnTimeout: time.Minute}
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	mk := func(sub string) (*client.Client, error) {
		tok, err := auth.Sign([]byte(secret), sub, 2*time.Hour, time.Now())
		return &client.Client{APIURL: *apiURL, WSURL: *wsURL, Token: tok, HTTP: hc}, err
	}

	ctx := context.Background()
	var received atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var rwg sync.WaitGroup
	rctx, stopRecv := context.WithCancel(ctx)
	defer stopRecv()
	names := make([]string, *recipients)
	for i := range names {
		names[i] = fmt.Sprintf("urn:bench:user:r%d-%d", i, time.Now().UnixNano())
		c, err := mk(names[i])
		if err != nil {
			return err
		}
		conn, err := c.Connect(ctx)
		if err != nil {
			return fmt.Errorf("connect %s: %w", names[i], err)
		}
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			defer conn.Close()
			local := make([]time.Duration, 0, 1<<16)
			ids := make([]string, 0, 100)
			for {
				env, err := conn.Next(rctx)
				if err != nil {
					break
				}
				sent := int64(binary.BigEndian.Uint64(env.Payload[:8]))
				local = append(local, time.Duration(time.Now().UnixNano()-sent))
				received.Add(1)
				ids = append(ids, env.ID)
				if len(ids) == cap(ids) {
					_ = conn.Ack(rctx, ids...)
					ids = ids[:0]
				}
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		}()
	}
	// Give the connections' presence a moment to register before sending.
	time.Sleep(200 * time.Millisecond)

	var sent, failed atomic.Int64
	var interval time.Duration
	if *rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(*senders) / *rate)
	}
	start := time.Now()
	end := start.Add(*duration)
	var swg sync.WaitGroup
	for s := 0; s < *senders; s++ {
		c, err := mk(fmt.Sprintf("urn:bench:user:s%d", s))
		if err != nil {
			return err
		}
		swg.Add(1)
		go func(s int) {
			defer swg.Done()
			buf := make([]byte, *payload)
			next := time.Now()
			for i := 0; time.Now().Before(end); i++ {
				if interval > 0 {
					next = next.Add(interval)
					if d := time.Until(next); d > 0 {
						time.Sleep(d)
					}
				}
				binary.BigEndian.PutUint64(buf, uint64(time.Now().UnixNano()))
				_, err := c.Send(ctx, client.Message{Recipient: names[(s+i)%len(names)], Payload: buf})
				if err != nil {
					failed.Add(1)
					continue
				}
				sent.Add(1)
			}
		}(s)
	}
	swg.Wait()
	sendElapsed := time.Since(start)
	// Wait for the stragglers (bounded).
	deadline := time.Now().Add(30 * time.Second)
	for received.Load() < sent.Load() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	recvElapsed := time.Since(start)
	stopRecv()
	rwg.Wait()

	slices.Sort(lat)
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(float64(len(lat))*p))]
	}
	fmt.Printf("senders=%d recipients=%d payload=%dB rate=%v duration=%v\n", *senders, *recipients, *payload, *rate, *duration)
	fmt.Printf("sent=%d failed=%d received=%d\n", sent.Load(), failed.Load(), received.Load())
	fmt.Printf("send throughput: %.0f msg/s; end-to-end throughput: %.0f msg/s\n",
		float64(sent.Load())/sendElapsed.Seconds(), float64(received.Load())/recvElapsed.Seconds())
	fmt.Printf("latency send->receipt: p50=%v p90=%v p99=%v max=%v\n",
		pct(.50).Round(10*time.Microsecond), pct(.90).Round(10*time.Microsecond), pct(.99).Round(10*time.Microsecond), pct(1).Round(10*time.Microsecond))
	if received.Load() < sent.Load() {
		return fmt.Errorf("%d accepted messages not received live within 30s", sent.Load()-received.Load())
	}
	return nil
}

func loopbackOnly(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
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
