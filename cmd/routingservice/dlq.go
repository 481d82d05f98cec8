package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/go-routing-service/routingservice/internal/admin"
	"github.com/go-routing-service/routingservice/internal/bus"
)

const dlqUsage = `usage: routingservice dlq <subcommand> <queue> ... [--config PATH]

queue is ingress (messages accepted by the API, before they are stored) or
delivery (delivery events to realtime instances).

subcommands:
  list <queue> [--limit N] [--json]    dead messages, oldest first: id, message id, attempts, age, reason
  show <queue> <id> [--json]           one dead message: attributes, reason, payload size (never the payload)
  replay <queue> (<id>... | --all)     put messages back on their topic
  purge <queue> (<id>... | --all) [--yes]
                                       delete messages; asks to type yes unless --yes

The command talks to the running service through its admin socket
(config key admin.socket, default <data_dir>/admin.sock).
`

// Where purge reads its confirmation; tests replace them.
var (
	dlqStdin      io.Reader = os.Stdin
	dlqIsTerminal           = func(r io.Reader) bool {
		f, ok := r.(*os.File)
		if !ok {
			return false
		}
		fi, err := f.Stat()
		return err == nil && fi.Mode()&os.ModeCharDevice != 0
	}
)

// dlqArgs parses flags placed anywhere among the positional arguments.
func dlqArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func dlq(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stderr, dlqUsage)
		if len(args) == 0 {
			return errors.New("dlq: no subcommand")
		}
		return nil
	}
	fs := flag.NewFlagSet("dlq", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, dlqUsage) }
	cfgPath := fs.String("config", "", "config file")
	limit := fs.Int("limit", admin.DefaultLimit, "list at most this many messages (1-10000)")
	asJSON := fs.Bool("json", false, "print JSON")
	all := fs.Bool("all", false, "every message of the queue")
	yes := fs.Bool("yes", false, "purge without asking")
	pos, err := dlqArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		fmt.Fprint(stderr, dlqUsage)
		return errors.New("dlq: no subcommand")
	}
	sub := pos[0]
	pos = pos[1:]
	usageErr := func(format string, a ...any) error {
		fmt.Fprint(stderr, dlqUsage)
		return fmt.Errorf("dlq "+sub+": "+format, a...)
	}
	if len(pos) == 0 {
		return usageErr("name the queue: %s or %s", bus.QueueIngress, bus.QueueDelivery)
	}
	queue, rest := pos[0], pos[1:]
	if queue != bus.QueueIngress && queue != bus.QueueDelivery {
		return usageErr("unknown queue %q: want %s or %s", queue, bus.QueueIngress, bus.QueueDelivery)
	}
	if (sub == "list" || sub == "show") && *all {
		return usageErr("--all is for replay and purge")
	}
	if sub == "list" && len(rest) > 0 {
		return usageErr("unexpected arguments %q", rest)
	}

	cfg, err := loadToolConfig(flag.NewFlagSet("config", flag.ContinueOnError), []string{"--config", *cfgPath}, "run_mode", "data_dir", "admin")
	if err != nil {
		return err
	}
	socket := cfg.AdminSocket()
	if socket == "" {
		return errors.New("dlq: the admin socket is disabled (config key admin.socket is \"-\")")
	}
	c := admin.NewClient(socket)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	switch sub {
	case "list":
		if *limit < 1 || *limit > admin.MaxLimit {
			return usageErr("--limit must be from 1 to %d", admin.MaxLimit)
		}
		msgs, err := c.List(ctx, queue, *limit)
		if err != nil {
			return fmt.Errorf("dlq list %s: %w", queue, err)
		}
		if *asJSON {
			return printJSON(stdout, msgs)
		}
		printDeadTable(stdout, msgs, time.Now())
		return nil
	case "show":
		if len(rest) != 1 {
			return usageErr("name one message id (see dlq list %s)", queue)
		}
		m, err := c.Get(ctx, queue, rest[0])
		if err != nil {
			return fmt.Errorf("dlq show %s %s: %w", queue, rest[0], err)
		}
		if *asJSON {
			return printJSON(stdout, m)
		}
		printDead(stdout, m, time.Now())
		return nil
	case "replay":
		if *all == (len(rest) > 0) {
			return usageErr("name the message ids to replay, or --all (not both)")
		}
		n, err := c.Replay(ctx, queue, rest)
		if err != nil {
			return fmt.Errorf("dlq replay %s: %w", queue, err)
		}
		fmt.Fprintf(stdout, "replayed %d message(s) of the %s dead-letter queue\n", n, queue)
		if len(rest) > 0 && n < len(rest) {
			fmt.Fprintf(stderr, "%d of the ids were not in the queue\n", len(rest)-n)
		}
		return nil
	case "purge":
		if *all == (len(rest) > 0) {
			return usageErr("name the message ids to purge, or --all (not both)")
		}
		if !*yes {
			what := fmt.Sprintf("%d message(s)", len(rest))
			if *all {
				what = "EVERY message"
			}
			if err := confirm(stderr, fmt.Sprintf("Delete %s of the %s dead-letter queue? This cannot be undone. Type yes: ", what, queue)); err != nil {
				return err
			}
		}
		n, err := c.Purge(ctx, queue, rest, *all)
		if err != nil {
			return fmt.Errorf("dlq purge %s: %w", queue, err)
		}
		fmt.Fprintf(stdout, "purged %d message(s) of the %s dead-letter queue\n", n, queue)
		return nil
	default:
		return usageErr("unknown subcommand (list, show, replay, purge)")
	}
}

// confirm asks on stderr and reads the answer from the terminal; anything
// but "yes", or no terminal, refuses.
func confirm(stderr io.Writer, prompt string) error {
	if !dlqIsTerminal(dlqStdin) {
		return errors.New("dlq purge: refusing without confirmation: stdin is not a terminal (run it in one, or pass --yes)")
	}
	fmt.Fprint(stderr, prompt)
	line, err := bufio.NewReader(dlqStdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("dlq purge: read confirmation: %w", err)
	}
	if strings.TrimSpace(line) != "yes" {
		return errors.New("dlq purge: not confirmed; nothing deleted")
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// maxReasonColumn bounds the reason column of the list table.
const maxReasonColumn = 100

func printDeadTable(w io.Writer, msgs []admin.DeadMessage, now time.Time) {
	if len(msgs) == 0 {
		fmt.Fprintln(w, "no dead messages")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tMESSAGE ID\tATTEMPTS\tAGE\tREASON")
	for _, m := range msgs {
		reason := strings.Join(strings.Fields(m.Reason), " ")
		if r := []rune(reason); len(r) > maxReasonColumn {
			reason = string(r[:maxReasonColumn-1]) + "…"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", m.ID, m.MessageID, m.Attempts, age(m.DeadAt, now), reason)
	}
	tw.Flush()
}

func printDead(w io.Writer, m admin.DeadMessage, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "id:\t%s\n", m.ID)
	fmt.Fprintf(tw, "queue:\t%s\n", m.Queue)
	fmt.Fprintf(tw, "message id:\t%s\n", m.MessageID)
	fmt.Fprintf(tw, "reason:\t%s\n", m.Reason)
	fmt.Fprintf(tw, "attempts:\t%d\n", m.Attempts)
	if !m.DeadAt.IsZero() {
		fmt.Fprintf(tw, "dead at:\t%s (%s ago)\n", m.DeadAt.UTC().Format(time.RFC3339), age(m.DeadAt, now))
	}
	fmt.Fprintf(tw, "payload:\t%d bytes (not shown)\n", m.Size)
	tw.Flush()
	if len(m.Attributes) == 0 {
		return
	}
	fmt.Fprintln(w, "attributes:")
	keys := make([]string, 0, len(m.Attributes))
	for k := range m.Attributes {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "  %s: %s\n", k, m.Attributes[k])
	}
}

// age formats how long ago t was, to the second ("-" when unknown).
func age(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t).Round(time.Second)
	switch {
	case d < 0:
		return "0s"
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
	}
	return d.String()
}
