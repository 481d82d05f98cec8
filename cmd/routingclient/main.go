// Command routingclient is a small client of the routing service, for trying
// it out and for scripts.
//
//	routingclient listen [--ws ws://127.0.0.1:8085] [--no-ack]       # print messages as JSON lines; reconnects
//	routingclient send --to urn:sm:user:bob --text hello [--api http://127.0.0.1:8082]
//	routingclient fetch [--api ...]                                    # pending messages
//
// The token comes from --token or the ROUTING_TOKEN environment variable
// (`routingservice token --sub ...` prints one).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"

	"github.com/go-routing-service/routingservice/pkg/client"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "routingclient:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: routingclient listen|send|fetch [flags]")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	apiURL := fs.String("api", "http://127.0.0.1:8082", "API base URL")
	wsURL := fs.String("ws", "ws://127.0.0.1:8085", "WebSocket base URL")
	token := fs.String("token", os.Getenv("ROUTING_TOKEN"), "JWT (default $ROUTING_TOKEN)")
	to := fs.String("to", "", "send: recipient URN")
	text := fs.String("text", "", "send: payload (sent as its bytes; a real client sends ciphertext)")
	typ := fs.String("type", "", "send: message type")
	noAck := fs.Bool("no-ack", false, "listen: do not acknowledge received messages")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *token == "" {
		return errors.New("no token: pass --token or set ROUTING_TOKEN")
	}
	c := &client.Client{APIURL: *apiURL, WSURL: *wsURL, Token: *token}
	enc := json.NewEncoder(stdout)
	switch args[0] {
	case "send":
		if *to == "" {
			return errors.New("send needs --to")
		}
		acc, err := c.Send(ctx, client.Message{Recipient: *to, Payload: []byte(*text), Type: *typ})
		if err != nil {
			return err
		}
		return enc.Encode(acc)
	case "fetch":
		p, err := c.Fetch(ctx, "", 500)
		if err != nil {
			return err
		}
		return enc.Encode(p)
	case "listen":
		// Reconnects after a lost connection; each message is printed once.
		st := c.Stream(client.StreamOptions{})
		defer st.Close()
		for {
			env, err := st.Next(ctx)
			if err != nil {
				return err
			}
			if err := enc.Encode(env); err != nil {
				return err
			}
			if !*noAck {
				// Printed first: a message is acknowledged only once it is out.
				if err := st.Ack(ctx, env.ID); err != nil {
					return err
				}
			}
		}
	default:
		return fmt.Errorf("unknown command %q (listen, send, fetch)", args[0])
	}
}
