package main

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// num formats x with dec decimals and thousands separators.
func num(x float64, dec int) string {
	s := strconv.FormatFloat(math.Abs(x), 'f', dec, 64)
	whole, frac, _ := strings.Cut(s, ".")
	var b strings.Builder
	for i, c := range whole {
		if i > 0 && (len(whole)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if frac != "" {
		b.WriteString("." + frac)
	}
	if x < 0 && strings.Trim(b.String(), "0.,") != "" {
		return "-" + b.String()
	}
	return b.String()
}

// sig formats x with about three significant figures.
func sig(x float64) string {
	switch a := math.Abs(x); {
	case a >= 100:
		return num(x, 0)
	case a >= 10:
		return num(x, 1)
	case a >= 1:
		return num(x, 2)
	default:
		return num(x, 3)
	}
}

func (r result) write(w io.Writer) {
	m, p := r.Med, r.P
	pr := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }

	pr("### Measured (median of %d runs)\n\n", len(r.Runs))
	pr("Per delivered message unless stated. Three instances: A api + pipeline, B every role, C realtime with the recipients.\n\n")
	if len(r.Meta) > 0 {
		pr("```\n%s\n```\n\n", strings.Join(r.Meta, "\n"))
	}
	pr("| figure |")
	for _, run := range r.Runs {
		pr(" run %d |", run.N)
	}
	pr(" median |\n|---|")
	for range r.Runs {
		pr("---|")
	}
	pr("---|\n")
	row := func(name string, f func(runData) float64, format func(float64) string) {
		pr("| %s |", name)
		for _, run := range r.Runs {
			pr(" %s |", format(f(run)))
		}
		pr(" **%s** |\n", format(f(m)))
	}
	n0 := func(x float64) string { return num(x, 0) }
	n1 := func(x float64) string { return num(x, 1) }
	n2 := func(x float64) string { return num(x, 2) }
	row("delivered in the run (messages)", func(d runData) float64 { return d.Delivered }, n0)
	row("delivered/s (7 processes and the load on 2 cores)", func(d runData) float64 { return d.DeliveredPerS }, n0)
	row("receipt p99, ms", func(d runData) float64 { return d.P99ms }, n1)
	row("CPU api + pipeline (A + B), µs", func(d runData) float64 { return d.APIPipelineUS }, n1)
	row("CPU realtime (C), µs", func(d runData) float64 { return d.RealtimeUS }, n1)
	row("CPU NATS, µs", func(d runData) float64 { return d.NATSUS }, n1)
	row("CPU PostgreSQL (backends included), µs", func(d runData) float64 { return d.PostgresUS }, n1)
	row("CPU Redis, µs", func(d runData) float64 { return d.RedisUS }, n1)
	row("PostgreSQL commits", func(d runData) float64 { return d.PGCommits }, n2)
	row("PostgreSQL rows written (inserted + updated + deleted)", func(d runData) float64 { return d.PGRows }, n2)
	row("PostgreSQL WAL bytes", func(d runData) float64 { return d.WALBytes }, n0)
	row("NATS messages in", func(d runData) float64 { return d.NATSMsgs }, n2)
	row("NATS bytes in", func(d runData) float64 { return d.NATSBytes }, n0)
	row("Redis commands", func(d runData) float64 { return d.RedisCmds }, n2)
	row("Redis CPU per presence refresh (one connection's heartbeat), µs", func(d runData) float64 { return d.RefreshUS }, n2)
	row("Redis bytes per connected user (presence)", func(d runData) float64 { return d.PresenceBytes }, n0)
	row("PostgreSQL bytes per pending message (offline run)", func(d runData) float64 { return d.StoreBytes }, n0)
	row("offline: stored/s into PostgreSQL (one instance)", func(d runData) float64 { return d.OfflineStoredPerS }, n0)
	row("resident bytes per idle WebSocket", func(d runData) float64 { return d.RSSPerConn }, n0)
	row("resident bytes of the server before its connections", func(d runData) float64 { return d.RSSBase }, n0)

	pr("\n### What one core and one GiB hold\n\n")
	pr("| role | per core | per GiB |\n|---|---|---|\n")
	pr("| api + pipeline | %s messages/s | (stateless) |\n", num(1e6/m.APIPipelineUS, 0))
	pr("| realtime | %s messages/s delivered | %s idle connections |\n", num(1e6/m.RealtimeUS, 0), num(gib/m.RSSPerConn, 0))
	pr("| NATS | %s messages/s | |\n", num(1e6/m.NATSUS, 0))
	pr("| PostgreSQL | %s messages/s (stored, delivered, acked) | %s pending messages on disk |\n",
		num(1e6/m.PostgresUS, 0), num(gib/m.StoreBytes, 0))
	pr("| Redis | %s messages/s, or %s connections' heartbeats (every %ss) | %s connected users |\n", num(1e6/m.RedisUS, 0),
		num(1e6/m.RefreshUS*p.HeartbeatSeconds, 0), num(p.HeartbeatSeconds, 0), num(gib/m.PresenceBytes, 0))

	pr("\n### Three deployments\n\n")
	pr("Instances of %s vCPU and %s GiB, CPU at most %s%% busy at the target rate, at least %d per role; "+
		"realtime instances hold at most %s connections (`realtime.max_conns`) and %s%% of their memory in connections; "+
		"%s%% of messages go to recipients online, the rest wait in the store.\n\n",
		num(p.Cores, 0), num(p.GiB, 0), num(p.CPUTarget*100, 0), p.MinInstances, num(float64(p.MaxConns), 0),
		num(p.MemTarget*100, 0), num(p.Online*100, 0))
	pr("| | %s |\n|---|", strings.Join(names(r.Size), " | "))
	for range r.Size {
		pr("---|")
	}
	pr("\n")
	srow := func(name string, f func(sizing) string) {
		pr("| %s |", name)
		for _, s := range r.Size {
			pr(" %s |", f(s))
		}
		pr("\n")
	}
	srow("api + pipeline instances", func(s sizing) string { return num(float64(s.APIPipeline), 0) })
	srow("realtime instances (bound)", func(s sizing) string {
		return fmt.Sprintf("%s (%s)", num(float64(s.Realtime), 0), s.RealtimeBound)
	})
	srow("realtime instances by CPU / memory / max_conns", func(s sizing) string {
		return fmt.Sprintf("%s / %s / %s", num(float64(s.RealtimeByCPU), 0), num(float64(s.RealtimeByMem), 0), num(float64(s.RealtimeByCap), 0))
	})
	srow("PostgreSQL: CPU cores (one primary)", func(s sizing) string { return sig(s.PGCores) })
	srow("PostgreSQL: commits/s", func(s sizing) string { return num(s.PGCommitsPerS, 0) })
	srow("PostgreSQL: rows written/s", func(s sizing) string { return num(s.PGRowsPS, 0) })
	srow("PostgreSQL: WAL MB/s", func(s sizing) string { return sig(s.WALMBPerS) })
	srow(fmt.Sprintf("PostgreSQL: a day's offline backlog (%s%% of a day's messages), GB", num((1-p.Online)*100, 0)),
		func(s sizing) string { return sig(s.BacklogGB) })
	srow("PostgreSQL: a whole day's messages unacked, GB", func(s sizing) string { return sig(s.BacklogAllGB) })
	srow("Redis: presence memory, GB", func(s sizing) string { return sig(s.RedisGB) })
	srow(fmt.Sprintf("Redis: commands/s (routing + a refresh per connection every %ss)", num(p.HeartbeatSeconds, 0)), func(s sizing) string { return num(s.RedisOpsPerS, 0) })
	srow("Redis: CPU cores (one thread per shard)", func(s sizing) string { return sig(s.RedisCores) })
	srow("Redis: of which heartbeats", func(s sizing) string { return sig(s.RedisRefreshCores) })
	srow("NATS: messages/s in (packed deliveries)", func(s sizing) string { return num(s.NATSMsgsPerS, 0) })
	srow("NATS: MB/s in", func(s sizing) string { return sig(s.NATSMBPS) })
	srow("NATS: CPU cores", func(s sizing) string { return sig(s.NATSCores) })
	srow("Pub/Sub: events published/s", func(s sizing) string { return num(s.EventsPerS, 0) })

	pr("\n### Pub/Sub bill per month\n\n")
	pr("Each event is billed %s bytes (its measured size, %s bytes, raised to Pub/Sub's minimum of %s bytes per request: "+
		"an upper bound, batching several events per request lowers it) once when published and once per subscription it reaches; "+
		"$%s per TiB after the first %s GiB of the month, a month of %s hours. Delivery events: %s%% of messages; "+
		"ingress messages: %s%% (the pipeline in the api's process takes the rest in process).\n\n",
		num(eventBytes(m, p), 0), num(m.NATSBytes, 0), num(p.PubSubMinBytes, 0), num(p.PricePerTiB, 0), num(p.FreeGiB, 0),
		num(p.SecondsPerMonth/3600, 0), num(p.Online*100, 0), num(p.IngressShare*100, 0))
	pr("| | %s |\n|---|", strings.Join(names(r.Size), " | "))
	for range r.Size {
		pr("---|")
	}
	pr("\n")
	srow("a topic per instance: subscriptions billed per event", func(s sizing) string { return num(s.OwnPerEventSubs, 0) })
	srow("a topic per instance: TiB per month", func(s sizing) string { return sig(s.OwnTiB) })
	srow("a topic per instance: USD per month", func(s sizing) string { return "$" + num(s.OwnUSD, 0) })
	srow("one shared topic (before 0.3.0): subscriptions billed per event", func(s sizing) string { return num(s.SharedPerEvent, 0) })
	srow("one shared topic: TiB per month", func(s sizing) string { return sig(s.SharedTiB) })
	srow("one shared topic: USD per month", func(s sizing) string { return "$" + num(s.SharedUSD, 0) })
}

func names(ss []sizing) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.T.Name
	}
	return out
}
