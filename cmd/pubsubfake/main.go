// Command pubsubfake serves the official Google Cloud Pub/Sub fake
// (cloud.google.com/go/pubsub/v2/pstest) over gRPC on a loopback port, for
// running the service on bus.type pubsub without Google Cloud:
//
//	go run ./cmd/pubsubfake -addr 127.0.0.1:8681 &
//	PUBSUB_EMULATOR_HOST=127.0.0.1:8681 routingservice serve --config pubsub.yaml
//
// The fake keeps everything in memory: topics, subscriptions and messages
// are gone when it stops. It differs from Pub/Sub in ways the README's
// Pub/Sub section lists.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"cloud.google.com/go/pubsub/v2/pstest"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8681", "loopback address to listen on (host:port)")
	flag.Parse()
	if err := run(*addr); err != nil {
		fmt.Fprintln(os.Stderr, "pubsubfake:", err)
		os.Exit(1)
	}
}

func run(addr string) error {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-addr: %w", err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("-addr: %q is not a loopback address", host)
	}
	if _, err := strconv.Atoi(p); err != nil {
		return fmt.Errorf("-addr: port %q: %w", p, err)
	}
	srv := pstest.NewServerWithAddress(addr)
	defer srv.Close()
	fmt.Printf("Pub/Sub fake listening on %s (PUBSUB_EMULATOR_HOST=%s)\n", srv.Addr, srv.Addr)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	return nil
}
