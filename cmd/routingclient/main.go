// Command routingclient is a small client of the routing service, for trying
// it out and for scripts.
//
//	routingclient listen [--ws ws://127.0.0.1:8085] [--no-ack] [--count N]  # print messages as JSON lines; reconnects
//	routingclient send --to bob --text hello [--api http://127.0.0.1:8082]   # bob: urn:sm:user:bob
//	routingclient fetch [--api ...] [--after CURSOR] [--limit N]       # pending messages
//	routingclient ack [--api ...] ID...                                # acknowledge messages
//
// The token comes from --token or the ROUTING_TOKEN environment variable
// (`routingservice token --sub ...` prints one); --api and --ws default to
// $ROUTING_API_URL and $ROUTING_WS_URL when set. Every command takes -h.
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
	"strings"

	"github.com/go-routing-service/routingservice/pkg/client"
)

const usage = `usage: routingclient <command> [flags]

commands:
  listen   print the caller's messages as JSON lines, acknowledging each; reconnects
  send     send a message: send --to URN|NAME --text TEXT (a bare NAME is urn:sm:user:NAME)
  fetch    print the pending messages
  ack      acknowledge messages: ack ID...

The token comes from --token or $ROUTING_TOKEN; --api and --ws default to $ROUTING_API_URL and
$ROUTING_WS_URL when set. "routingclient <command> -h" lists the command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "routingclient:", err)
		os.Exit(1)
	}
}

// run runs one command; -h prints the command's flags and returns nil.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	err := command(ctx, args, stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}

// flags returns the flag set of a command with the flags every command has.
func flags(name, synopsis string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: routingclient %s\n\nflags:\n", synopsis)
		fs.PrintDefaults()
	}
	token := fs.String("token", os.Getenv("ROUTING_TOKEN"), "JWT (default $ROUTING_TOKEN)")
	return fs, token
}

func parse(fs *flag.FlagSet, args []string, token *string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *token == "" {
		return errors.New("no token: pass --token or set ROUTING_TOKEN")
	}
	return nil
}

// The service's addresses when --api and --ws are not given:
// $ROUTING_API_URL and $ROUTING_WS_URL, else the defaults of a local
// service.
func defaultAPI() string { return envOr("ROUTING_API_URL", "http://127.0.0.1:8082") }
func defaultWS() string  { return envOr("ROUTING_WS_URL", "ws://127.0.0.1:8085") }

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func command(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command")
	}
	enc := json.NewEncoder(stdout)
	switch args[0] {
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	case "send":
		fs, token := flags("send", "send --to URN|NAME [--text TEXT] [--type TYPE]", stderr)
		apiURL := fs.String("api", defaultAPI(), "API base URL (default $ROUTING_API_URL when set)")
		to := fs.String("to", "", "recipient URN, or a bare name for urn:sm:user:NAME")
		text := fs.String("text", "", "payload (sent as its bytes; a real client sends ciphertext)")
		typ := fs.String("type", "", "message type")
		if err := parse(fs, args[1:], token); err != nil {
			return err
		}
		if *to == "" {
			return errors.New("send needs --to")
		}
		c := &client.Client{APIURL: *apiURL, Token: *token}
		acc, err := c.Send(ctx, client.Message{Recipient: recipientURN(*to), Payload: []byte(*text), Type: *typ})
		if err != nil {
			return err
		}
		return enc.Encode(acc)
	case "fetch":
		fs, token := flags("fetch", "fetch [--after CURSOR] [--limit N]", stderr)
		apiURL := fs.String("api", defaultAPI(), "API base URL (default $ROUTING_API_URL when set)")
		after := fs.String("after", "", "the page after this cursor (the next_cursor of the page before)")
		limit := fs.Int("limit", 500, "at most this many messages")
		if err := parse(fs, args[1:], token); err != nil {
			return err
		}
		c := &client.Client{APIURL: *apiURL, Token: *token}
		p, err := c.Fetch(ctx, *after, *limit)
		if err != nil {
			return err
		}
		return enc.Encode(p)
	case "ack":
		fs, token := flags("ack", "ack [flags] ID...", stderr)
		apiURL := fs.String("api", defaultAPI(), "API base URL (default $ROUTING_API_URL when set)")
		if err := parse(fs, args[1:], token); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			return errors.New("ack needs at least one message id")
		}
		c := &client.Client{APIURL: *apiURL, Token: *token}
		return c.Ack(ctx, fs.Args()...)
	case "listen":
		fs, token := flags("listen", "listen [--ws URL] [--no-ack] [--count N]", stderr)
		wsURL := fs.String("ws", defaultWS(), "WebSocket base URL (default $ROUTING_WS_URL when set)")
		noAck := fs.Bool("no-ack", false, "do not acknowledge received messages")
		count := fs.Int("count", 0, "exit after this many messages (0: listen until interrupted)")
		if err := parse(fs, args[1:], token); err != nil {
			return err
		}
		c := &client.Client{WSURL: *wsURL, Token: *token}
		// Reconnects after a lost connection; each message is printed once.
		st := c.Stream(client.StreamOptions{OnState: func(connected bool, err error) {
			if connected {
				fmt.Fprintf(stderr, "routingclient: connected to %s\n", *wsURL)
			} else {
				fmt.Fprintf(stderr, "routingclient: disconnected (%v); reconnecting\n", err)
			}
		}})
		defer st.Close()
		for n := 1; ; n++ {
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
			if *count > 0 && n >= *count {
				return nil
			}
		}
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q (listen, send, fetch, ack)", args[0])
	}
}

// recipientURN is name as a URN: a bare name (no "urn:" prefix) is a user
// of the demo's namespace, urn:sm:user:NAME, as the browser demo takes it.
func recipientURN(name string) string {
	name = strings.TrimSpace(name)
	if strings.HasPrefix(name, "urn:") {
		return name
	}
	return "urn:sm:user:" + name
}
