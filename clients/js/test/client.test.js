import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  RoutingClient, RoutingError, SendUnansweredError, backoff, encodePayload, decodePayload, base64UrlToBytes, tokenExpiry, randomKey,
} from '../src/index.js';

/** A fetch that answers from a queue of [status, body, headers] and records the requests. */
function fakeFetch(answers) {
  const calls = [];
  const fn = async (url, init) => {
    calls.push({ url, ...init });
    const [status, body, headers = {}] = answers.shift();
    return new Response(status === 204 ? null : JSON.stringify(body), { status, headers });
  };
  fn.calls = calls;
  return fn;
}

/** A WebSocket stand-in driven by the test. */
class FakeWS {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeWS.all.push(this);
  }
  send(data) { this.sent.push(JSON.parse(data)); }
  close(code = 1000, reason = '') { this.serverClose(code, reason); }
  open() { this.readyState = 1; this.onopen?.({}); }
  frame(obj) { this.onmessage?.({ data: JSON.stringify(obj) }); }
  serverClose(code, reason = '') {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

const env = (id) => ({ id, sender: 'urn:sm:user:alice', recipient: 'urn:sm:user:bob', payload: 'aGk=', created_at: '2026-01-01T00:00:00Z' });

function jwt(claims) {
  const b = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b({ alg: 'HS256' })}.${b(claims)}.sig`;
}

async function until(cond, what) {
  const deadline = Date.now() + 2000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setTimeout(r, 1));
  }
}

test('send encodes the payload and names the fields of the contract', async () => {
  const f = fakeFetch([[202, { id: 'm1', created_at: 'x' }]]);
  const c = new RoutingClient({ apiUrl: 'http://api/', token: 't', fetch: f });
  const acc = await c.send({ recipient: 'urn:sm:user:bob', payload: 'héllo', type: 'chat', idempotencyKey: 'k1' });
  assert.equal(acc.id, 'm1');
  assert.equal(f.calls[0].url, 'http://api/v1/messages');
  assert.equal(f.calls[0].method, 'POST');
  assert.equal(f.calls[0].headers.Authorization, 'Bearer t');
  assert.equal(f.calls[0].headers['Content-Type'], 'application/json');
  assert.deepEqual(JSON.parse(f.calls[0].body), {
    recipient: 'urn:sm:user:bob', payload: Buffer.from('héllo').toString('base64'), type: 'chat', idempotency_key: 'k1',
  });
});

test('fetch and ack', async () => {
  const f = fakeFetch([[200, { messages: [env('a')], next_cursor: '' }], [204]]);
  const c = new RoutingClient({ apiUrl: 'http://api', token: 't', fetch: f });
  const page = await c.fetch({ limit: 5, after: 'c1' });
  assert.equal(page.messages[0].id, 'a');
  assert.equal(f.calls[0].url, 'http://api/v1/messages?limit=5&after=c1');
  assert.equal(await c.ack(['a']), undefined);
  assert.deepEqual(JSON.parse(f.calls[1].body), { ids: ['a'] });
});

test('an error answer becomes a RoutingError with code and Retry-After', async () => {
  const f = fakeFetch([[429, { error: { code: 'rate_limited', message: 'slow down' } }, { 'Retry-After': '3' }]]);
  const c = new RoutingClient({ apiUrl: 'http://api', token: 't', fetch: f });
  await assert.rejects(c.send({ recipient: 'urn:sm:user:bob', payload: 'x' }), (err) => {
    assert.ok(err instanceof RoutingError);
    assert.equal(err.status, 429);
    assert.equal(err.code, 'rate_limited');
    assert.equal(err.retryAfter, 3);
    return true;
  });
});

test('a 401 renews the token once and repeats the request', async () => {
  const f = fakeFetch([[401, { error: { code: 'unauthorized', message: 'expired' } }], [202, { id: 'm', created_at: 'x' }]]);
  let renewals = 0;
  const c = new RoutingClient({ apiUrl: 'http://api', token: 'old', fetch: f, renewToken: async () => { renewals++; return 'new'; } });
  await c.send({ recipient: 'urn:sm:user:bob', payload: 'x' });
  assert.equal(renewals, 1);
  assert.equal(f.calls[1].headers.Authorization, 'Bearer new');

  const f2 = fakeFetch([[401, { error: { code: 'unauthorized', message: 'bad' } }]]);
  const c2 = new RoutingClient({ apiUrl: 'http://api', token: 'old', fetch: f2 });
  await assert.rejects(c2.fetch(), (err) => err.status === 401);
  assert.equal(f2.calls.length, 1);
});

test('registerWebPush subscribes with the service VAPID key and registers the subscription', async () => {
  const key = Buffer.from([4, 1, 2, 3]).toString('base64url');
  const f = fakeFetch([[200, { public_key: key }], [204]]);
  const c = new RoutingClient({ apiUrl: 'http://api', token: 't', fetch: f });
  let opts;
  const registration = {
    pushManager: {
      subscribe: async (o) => {
        opts = o;
        return { toJSON: () => ({ endpoint: 'https://push.example/1', expirationTime: null, keys: { p256dh: 'P', auth: 'A' } }) };
      },
    },
  };
  await c.registerWebPush(registration);
  assert.equal(f.calls[0].url, 'http://api/v1/push/vapid-public-key');
  assert.equal(opts.userVisibleOnly, true);
  assert.deepEqual([...opts.applicationServerKey], [4, 1, 2, 3]);
  assert.equal(f.calls[1].method, 'PUT');
  assert.deepEqual(JSON.parse(f.calls[1].body), {
    platform: 'webpush', subscription: { endpoint: 'https://push.example/1', keys: { p256dh: 'P', auth: 'A' } },
  });
});

test('subscribe: backlog and live once per id, reconnect after a drop, auto-ack', async () => {
  FakeWS.all = [];
  const got = [];
  const states = [];
  const c = new RoutingClient({ apiUrl: 'http://api', wsUrl: 'ws://rt', token: 'tok', WebSocket: FakeWS });
  const sub = c.subscribe({ onMessage: (e) => got.push(e.id), onState: (s) => states.push(s), autoAck: true, minBackoff: 5, maxBackoff: 20 });
  const ws1 = FakeWS.all[0];
  assert.equal(ws1.url, 'ws://rt/v1/connect?access_token=tok');
  ws1.open();
  ws1.frame({ type: 'message', message: env('a') });
  ws1.frame({ type: 'message', message: env('b') });
  ws1.frame({ type: 'message', message: env('a') });
  assert.deepEqual(got, ['a', 'b']);
  // every copy is acked, repeats too (an earlier ack may have been lost)
  assert.deepEqual(ws1.sent, [{ type: 'ack', ids: ['a'] }, { type: 'ack', ids: ['b'] }, { type: 'ack', ids: ['a'] }]);

  ws1.serverClose(1006);
  await until(() => FakeWS.all.length === 2, 'a reconnect');
  const ws2 = FakeWS.all[1];
  ws2.open();
  ws2.frame({ type: 'message', message: env('b') });
  ws2.frame({ type: 'message', message: env('c') });
  assert.deepEqual(got, ['a', 'b', 'c']);
  assert.deepEqual(states, ['connecting', 'open', 'closed', 'connecting', 'open']);
  sub.close();
  assert.equal(ws2.readyState, 3);
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(FakeWS.all.length, 2, 'no reconnect after close');
});

test('subscribe: without autoAck nothing is acked until ack() is called', async () => {
  FakeWS.all = [];
  const f = fakeFetch([[204]]);
  const c = new RoutingClient({ apiUrl: 'http://api', wsUrl: 'ws://rt', token: 'tok', WebSocket: FakeWS, fetch: f });
  const sub = c.subscribe({ onMessage: () => {}, minBackoff: 5 });
  const ws = FakeWS.all[0];
  ws.open();
  ws.frame({ type: 'message', message: env('a') });
  assert.deepEqual(ws.sent, []);
  await sub.ack(['a']);
  assert.deepEqual(ws.sent, [{ type: 'ack', ids: ['a'] }]);
  sub.close();
  await sub.ack(['b']); // no connection: over HTTP
  assert.equal(f.calls[0].url, 'http://api/v1/messages/ack');
});

test('subscribe: a session closed with 1008 "token expired" reconnects with a renewed token', async () => {
  FakeWS.all = [];
  let renewals = 0;
  const c = new RoutingClient({
    apiUrl: 'http://api', wsUrl: 'ws://rt', token: 'old', WebSocket: FakeWS,
    renewToken: async () => { renewals++; return 'new'; },
  });
  const sub = c.subscribe({ onMessage: () => {}, minBackoff: 5 });
  FakeWS.all[0].open();
  FakeWS.all[0].serverClose(1008, 'token expired');
  await until(() => FakeWS.all.length === 2, 'a reconnect');
  assert.equal(renewals, 1);
  assert.equal(FakeWS.all[1].url, 'ws://rt/v1/connect?access_token=new');
  sub.close();

  // Without renewToken the subscription ends with an error.
  FakeWS.all = [];
  const errors = [];
  const c2 = new RoutingClient({ apiUrl: 'http://api', wsUrl: 'ws://rt', token: 'old', WebSocket: FakeWS });
  c2.subscribe({ onMessage: () => {}, onError: (e) => errors.push(e), minBackoff: 5 });
  FakeWS.all[0].open();
  FakeWS.all[0].serverClose(1008, 'token expired');
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(FakeWS.all.length, 1);
  assert.equal(errors[0].code, 'token_expired');
});

test('subscribe: a token already expired is renewed before connecting', async () => {
  FakeWS.all = [];
  const expired = jwt({ sub: 'urn:sm:user:bob', exp: Math.floor(Date.now() / 1000) - 10 });
  const c = new RoutingClient({ apiUrl: 'http://api', wsUrl: 'ws://rt', token: expired, WebSocket: FakeWS, renewToken: async () => 'fresh' });
  const sub = c.subscribe({ onMessage: () => {} });
  await until(() => FakeWS.all.length === 1, 'a connection');
  assert.equal(FakeWS.all[0].url, 'ws://rt/v1/connect?access_token=fresh');
  sub.close();
});

test('subscribe: failed connections back off with growing, jittered waits', async () => {
  FakeWS.all = [];
  const c = new RoutingClient({ apiUrl: 'http://api', wsUrl: 'ws://rt', token: 'tok', WebSocket: FakeWS });
  const sub = c.subscribe({ onMessage: () => {}, minBackoff: 1, maxBackoff: 4 });
  for (let i = 1; i <= 4; i++) {
    FakeWS.all[i - 1].serverClose(1006); // refused before opening
    await until(() => FakeWS.all.length === i + 1, `attempt ${i + 1}`);
  }
  assert.equal(sub.attempt, 4);
  sub.close();
});

test('backoff is full jitter under a doubling ceiling', () => {
  assert.equal(backoff(0, 100, 1000, () => 0.999), 99);
  assert.equal(backoff(3, 100, 1000, () => 0.999), 799);
  assert.equal(backoff(20, 100, 1000, () => 0.999), 999);
  assert.equal(backoff(5, 100, 1000, () => 0), 0);
  const seen = new Set();
  for (let i = 0; i < 100; i++) seen.add(backoff(4, 100, 30000));
  assert.ok(seen.size > 50, 'waits vary');
});

test('send goes over the open WebSocket; answers are matched by ref, in any order', async () => {
  FakeWS.all = [];
  const f = fakeFetch([]);
  const c = new RoutingClient({ apiUrl: 'http://api', wsUrl: 'ws://rt', token: 'tok', WebSocket: FakeWS, fetch: f });
  const sub = c.subscribe({ onMessage: () => {} });
  const ws = FakeWS.all[0];
  ws.open();
  const first = c.send({ recipient: 'urn:sm:user:bob', payload: 'one', type: 'chat', idempotencyKey: 'k1' });
  const second = c.send({ recipient: 'urn:sm:user:carol', payload: 'two' });
  await until(() => ws.sent.length === 2, 'two send frames');
  const [f1, f2] = ws.sent;
  assert.deepEqual(f1, { type: 'send', ref: f1.ref, message: { recipient: 'urn:sm:user:bob', payload: encodePayload('one'), type: 'chat', idempotency_key: 'k1' } });
  assert.equal(f2.type, 'send');
  assert.notEqual(f1.ref, f2.ref);
  ws.frame({ type: 'sent', ref: f2.ref, id: 'm2', created_at: 't2' });
  ws.frame({ type: 'sent', ref: f1.ref, id: 'm1', created_at: 't1' });
  assert.deepEqual(await first, { id: 'm1', created_at: 't1', via: 'websocket' });
  assert.deepEqual(await second, { id: 'm2', created_at: 't2', via: 'websocket' });
  assert.equal(f.calls.length, 0, 'no HTTP request');
  sub.close();
});

test('a send_error rejects with the code, the HTTP status of that code and retry_after', async () => {
  FakeWS.all = [];
  const c = new RoutingClient({ apiUrl: 'http://api', wsUrl: 'ws://rt', token: 'tok', WebSocket: FakeWS });
  const sub = c.subscribe({ onMessage: () => {} });
  const ws = FakeWS.all[0];
  ws.open();
  const p = c.send({ recipient: 'urn:sm:user:bob', payload: 'x' });
  await until(() => ws.sent.length === 1, 'the send frame');
  ws.frame({ type: 'send_error', ref: ws.sent[0].ref, error: { code: 'rate_limited', message: 'slow down' }, retry_after: 2 });
  await assert.rejects(p, (e) => e instanceof RoutingError && e.status === 429 && e.code === 'rate_limited' && e.retryAfter === 2);
  sub.close();
});

test('send without an open WebSocket goes over HTTP', async () => {
  FakeWS.all = [];
  const f = fakeFetch([[202, { id: 'm1', created_at: 't' }]]);
  const c = new RoutingClient({ apiUrl: 'http://api', wsUrl: 'ws://rt', token: 'tok', WebSocket: FakeWS, fetch: f });
  const sub = c.subscribe({ onMessage: () => {} }); // connecting, not open
  assert.deepEqual(await c.send({ recipient: 'urn:sm:user:bob', payload: 'x' }), { id: 'm1', created_at: 't', via: 'http' });
  assert.equal(f.calls[0].url, 'http://api/v1/messages');
  assert.deepEqual(FakeWS.all[0].sent, []);
  sub.close();
});

test('a send whose WebSocket closes before its answer rejects as unanswered; retryUnanswered sends it again over HTTP with its key', async () => {
  FakeWS.all = [];
  const c = new RoutingClient({ apiUrl: 'http://api', wsUrl: 'ws://rt', token: 'tok', WebSocket: FakeWS, fetch: fakeFetch([]) });
  const sub = c.subscribe({ onMessage: () => {}, minBackoff: 5 });
  const ws = FakeWS.all[0];
  ws.open();
  const p = c.send({ recipient: 'urn:sm:user:bob', payload: 'x', idempotencyKey: 'k1' });
  await until(() => ws.sent.length === 1, 'the send frame');
  ws.serverClose(1006);
  await assert.rejects(p, (e) => e instanceof SendUnansweredError && e.code === 'unanswered');
  sub.close();

  FakeWS.all = [];
  const f = fakeFetch([[202, { id: 'm1', created_at: 't' }]]);
  const r = new RoutingClient({ apiUrl: 'http://api', wsUrl: 'ws://rt', token: 'tok', WebSocket: FakeWS, fetch: f, retryUnanswered: true });
  const sub2 = r.subscribe({ onMessage: () => {}, minBackoff: 5 });
  const ws2 = FakeWS.all[0];
  ws2.open();
  const q = r.send({ recipient: 'urn:sm:user:bob', payload: 'x' });
  await until(() => ws2.sent.length === 1, 'the send frame');
  const key = ws2.sent[0].message.idempotency_key;
  assert.match(key, /^[A-Za-z0-9_-]{22}$/, 'a key was given to the message');
  ws2.serverClose(1006);
  assert.deepEqual(await q, { id: 'm1', created_at: 't', via: 'http' });
  assert.equal(JSON.parse(f.calls[0].body).idempotency_key, key, 'sent again with the same key');
  sub2.close();
});

test('sendBatch posts every message and returns the answers; an error names the message at fault', async () => {
  const f = fakeFetch([
    [202, { messages: [{ id: 'a', created_at: 't' }, { id: 'b', created_at: 't' }] }],
    [429, { error: { code: 'recipient_queue_full', message: 'full', index: 1 } }],
  ]);
  const c = new RoutingClient({ apiUrl: 'http://api', token: 't', fetch: f });
  const msgs = [
    { recipient: 'urn:sm:user:bob-phone', payload: 'c1', type: 'chat', idempotencyKey: 'g-bob-phone' },
    { recipient: 'urn:sm:user:bob-laptop', payload: 'c2', type: 'chat', idempotencyKey: 'g-bob-laptop' },
  ];
  assert.deepEqual(await c.sendBatch(msgs), [{ id: 'a', created_at: 't' }, { id: 'b', created_at: 't' }]);
  assert.equal(f.calls[0].url, 'http://api/v1/messages/batch');
  assert.deepEqual(JSON.parse(f.calls[0].body), { messages: [
    { recipient: 'urn:sm:user:bob-phone', payload: encodePayload('c1'), type: 'chat', idempotency_key: 'g-bob-phone' },
    { recipient: 'urn:sm:user:bob-laptop', payload: encodePayload('c2'), type: 'chat', idempotency_key: 'g-bob-laptop' },
  ] });
  await assert.rejects(c.sendBatch(msgs), (e) => e instanceof RoutingError && e.status === 429 && e.code === 'recipient_queue_full' && e.index === 1);
  assert.notEqual(randomKey(), randomKey());
});

test('payload and key encodings', () => {
  const bytes = new Uint8Array(70000).map((_, i) => i % 251);
  assert.deepEqual(decodePayload(encodePayload(bytes)), bytes);
  assert.equal(encodePayload('hi'), 'aGk=');
  assert.deepEqual([...base64UrlToBytes('-_8')], [0xfb, 0xff]);
  assert.equal(tokenExpiry(jwt({ exp: 1700000000 })), 1700000000000);
  assert.equal(tokenExpiry('not a jwt'), undefined);
});
