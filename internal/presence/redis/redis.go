// Package redis is the presence registry on Redis, shared by every instance
// of a scaled-out deployment.
//
// Each user has one sorted set, KeyPrefix+"presence:"+user, whose members are
// "instance|connID" scored by their expiry time in Unix milliseconds. Every
// time is read from the Redis server (TIME inside a script), so instances
// with skewed clocks agree on what has expired. Instances lists the members
// scored after now and returns their distinct instances. Add and Refresh drop
// expired members of the user and set the key's expiry to the TTL, so a user
// whose connections all went quiet (a crashed instance included) vanishes on
// its own.
package redis

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/go-routing-service/routingservice/internal/presence"
)

// Options configure the Redis registry.
type Options struct {
	// Addr is host:port of the Redis server.
	Addr     string
	Password string
	DB       int
	// KeyPrefix starts every key the registry writes (e.g. "routing:").
	KeyPrefix string
	// TLS connects with TLS (server name from Addr, TLS 1.2 or later).
	TLS bool
	// TTL after which a connection that was neither refreshed nor removed expires.
	TTL time.Duration
}

// roundTripBatch is the number of connections refreshed, or users looked
// up, per pipelined round trip.
const roundTripBatch = 1000

// upsertSrc registers or refreshes one connection.
// KEYS[1] user key; ARGV[1] member; ARGV[2] TTL in milliseconds.
const upsertSrc = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
redis.call('ZADD', KEYS[1], string.format('%d', now + ttl), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
`

// instancesSrc returns the distinct instances of the unexpired members.
// KEYS[1] user key.
const instancesSrc = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local members = redis.call('ZRANGEBYSCORE', KEYS[1], string.format('(%d', now), '+inf')
local seen, out = {}, {}
for _, m in ipairs(members) do
  local i = string.find(m, '|', 1, true)
  if i then
    local inst = string.sub(m, 1, i - 1)
    if not seen[inst] then
      seen[inst] = true
      out[#out + 1] = inst
    end
  end
end
return out
`

// Presence is a presence.Presence on Redis. It is safe for concurrent use.
type Presence struct {
	client    *goredis.Client
	prefix    string
	ttlMillis string
	upsert    *goredis.Script
	instances *goredis.Script
	closed    atomic.Bool
}

var _ presence.Presence = (*Presence)(nil)

// New connects to Redis, checks that it answers and loads the scripts. The
// context bounds only this start-up.
func New(ctx context.Context, opts Options) (*Presence, error) {
	if opts.Addr == "" {
		return nil, errors.New("presence redis: Addr is required")
	}
	if opts.TTL < time.Millisecond {
		return nil, fmt.Errorf("presence redis: TTL must be at least 1ms, got %v", opts.TTL)
	}
	ro, err := clientOptions(opts)
	if err != nil {
		return nil, err
	}
	p := &Presence{
		client:    goredis.NewClient(ro),
		prefix:    opts.KeyPrefix + "presence:",
		ttlMillis: strconv.FormatInt(opts.TTL.Milliseconds(), 10),
		upsert:    goredis.NewScript(upsertSrc),
		instances: goredis.NewScript(instancesSrc),
	}
	if err := p.client.Ping(ctx).Err(); err != nil {
		_ = p.client.Close()
		return nil, fmt.Errorf("presence redis: ping %s: %w", opts.Addr, err)
	}
	if err := p.loadScripts(ctx); err != nil {
		_ = p.client.Close()
		return nil, err
	}
	return p, nil
}

// clientOptions are the Redis client's settings for opts.
func clientOptions(opts Options) (*goredis.Options, error) {
	if opts.Addr == "" {
		return nil, errors.New("presence redis: Addr is required")
	}
	ro := &goredis.Options{Addr: opts.Addr, Password: opts.Password, DB: opts.DB}
	if opts.TLS {
		host, _, err := net.SplitHostPort(opts.Addr)
		if err != nil {
			return nil, fmt.Errorf("presence redis: Addr %q: %w", opts.Addr, err)
		}
		ro.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
	}
	return ro, nil
}

// Check connects as New does (address, password, database, TLS), sends
// PING and reads the server's version (INFO server; "" when refused); it
// loads no script and writes nothing.
func Check(ctx context.Context, opts Options) (version string, err error) {
	ro, err := clientOptions(opts)
	if err != nil {
		return "", err
	}
	ro.MaxRetries = -1 // one answer or one error, within ctx
	c := goredis.NewClient(ro)
	defer c.Close()
	if err := c.Ping(ctx).Err(); err != nil {
		return "", fmt.Errorf("presence redis: ping %s: %w", opts.Addr, err)
	}
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		return "", nil // INFO may be refused (ACLs); the service does not need it
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			return v, nil
		}
	}
	return "", nil
}

func (p *Presence) loadScripts(ctx context.Context) error {
	for _, s := range []*goredis.Script{p.upsert, p.instances} {
		if err := s.Load(ctx, p.client).Err(); err != nil {
			return fmt.Errorf("presence redis: load script: %w", err)
		}
	}
	return nil
}

func (p *Presence) key(user string) string { return p.prefix + user }

func member(c presence.Conn) (string, error) {
	if strings.IndexByte(c.Instance, '|') >= 0 {
		return "", fmt.Errorf("presence redis: instance %q contains '|'", c.Instance)
	}
	return c.Instance + "|" + c.ID, nil
}

// Add registers c until the TTL passes without a Refresh.
func (p *Presence) Add(ctx context.Context, c presence.Conn) error {
	if p.closed.Load() {
		return presence.ErrClosed
	}
	m, err := member(c)
	if err != nil {
		return err
	}
	if err := p.upsert.Run(ctx, p.client, []string{p.key(c.User)}, m, p.ttlMillis).Err(); err != nil {
		return p.wrap(err, "add %s", c.User)
	}
	return nil
}

// Remove unregisters c. Removing an unknown connection is not an error.
func (p *Presence) Remove(ctx context.Context, c presence.Conn) error {
	if p.closed.Load() {
		return presence.ErrClosed
	}
	m, err := member(c)
	if err != nil {
		return err
	}
	if err := p.client.ZRem(ctx, p.key(c.User), m).Err(); err != nil {
		return p.wrap(err, "remove %s", c.User)
	}
	return nil
}

// Refresh extends the TTL of conns, pipelining up to 1,000 connections per
// round trip. A connection that is missing (it expired, or Redis lost it) is
// registered again, so a heartbeat heals the registry after a Redis restart.
func (p *Presence) Refresh(ctx context.Context, conns []presence.Conn) error {
	if p.closed.Load() {
		return presence.ErrClosed
	}
	for len(conns) > 0 {
		n := min(len(conns), roundTripBatch)
		if err := p.refreshBatch(ctx, conns[:n]); err != nil {
			return err
		}
		conns = conns[n:]
	}
	return nil
}

func (p *Presence) refreshBatch(ctx context.Context, conns []presence.Conn) error {
	type item struct{ key, member string }
	items := make([]item, len(conns))
	for i, c := range conns {
		m, err := member(c)
		if err != nil {
			return err
		}
		items[i] = item{p.key(c.User), m}
	}
	err := p.execScripts(ctx, func(pipe goredis.Pipeliner) {
		for _, it := range items {
			p.upsert.EvalSha(ctx, pipe, []string{it.key}, it.member, p.ttlMillis)
		}
	})
	if err != nil {
		return p.wrap(err, "refresh %d connections", len(conns))
	}
	return nil
}

// execScripts runs the script calls that queue puts on a pipeline, in one
// round trip; if the server lost its script cache (restart, failover,
// SCRIPT FLUSH), it loads the scripts again and runs the calls once more.
func (p *Presence) execScripts(ctx context.Context, queue func(goredis.Pipeliner)) error {
	run := func() error {
		pipe := p.client.Pipeline()
		queue(pipe)
		_, err := pipe.Exec(ctx)
		return err
	}
	err := run()
	if err != nil && goredis.HasErrorPrefix(err, "NOSCRIPT") {
		if err := p.loadScripts(ctx); err != nil {
			return err
		}
		err = run()
	}
	return err
}

// Instances returns the distinct instances that hold an unexpired connection
// of user, in one round trip.
func (p *Presence) Instances(ctx context.Context, user string) ([]string, error) {
	if p.closed.Load() {
		return nil, presence.ErrClosed
	}
	out, err := p.instances.Run(ctx, p.client, []string{p.key(user)}).StringSlice()
	if err != nil {
		return nil, p.wrap(err, "instances %s", user)
	}
	return out, nil
}

// InstancesOf returns Instances of each of users, pipelining up to 1,000
// users per round trip.
func (p *Presence) InstancesOf(ctx context.Context, users []string) ([][]string, error) {
	if p.closed.Load() {
		return nil, presence.ErrClosed
	}
	out := make([][]string, 0, len(users))
	for len(users) > 0 {
		n := min(len(users), roundTripBatch)
		got, err := p.instancesOf(ctx, users[:n])
		if err != nil {
			return nil, err
		}
		out = append(out, got...)
		users = users[n:]
	}
	return out, nil
}

func (p *Presence) instancesOf(ctx context.Context, users []string) ([][]string, error) {
	cmds := make([]*goredis.Cmd, len(users))
	err := p.execScripts(ctx, func(pipe goredis.Pipeliner) {
		for i, u := range users {
			cmds[i] = p.instances.EvalSha(ctx, pipe, []string{p.key(u)})
		}
	})
	if err != nil {
		return nil, p.wrap(err, "instances of %d users", len(users))
	}
	out := make([][]string, len(users))
	for i, c := range cmds {
		if out[i], err = c.StringSlice(); err != nil {
			return nil, p.wrap(err, "instances %s", users[i])
		}
	}
	return out, nil
}

// Ping reports whether the Redis server answers.
func (p *Presence) Ping(ctx context.Context) error {
	if p.closed.Load() {
		return presence.ErrClosed
	}
	if err := p.client.Ping(ctx).Err(); err != nil {
		return p.wrap(err, "ping")
	}
	return nil
}

// Close closes the connection pool. Later calls return presence.ErrClosed;
// Close itself may be called more than once. Entries stay in Redis until
// they expire.
func (p *Presence) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
	if err := p.client.Close(); err != nil {
		return fmt.Errorf("presence redis: close: %w", err)
	}
	return nil
}

// wrap adds context to err and turns go-redis's closed-client error into
// presence.ErrClosed (for a call that raced with Close).
func (p *Presence) wrap(err error, format string, args ...any) error {
	if errors.Is(err, goredis.ErrClosed) {
		err = errors.Join(presence.ErrClosed, err)
	}
	return fmt.Errorf("presence redis: %s: %w", fmt.Sprintf(format, args...), err)
}
