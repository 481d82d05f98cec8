// Runs against a running service: ROUTING_API_URL and ROUTING_WS_URL
// (scripts/with-service.sh starts one). Needs a global WebSocket: Node 22+,
// or Node 20 with --experimental-websocket.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RoutingClient, RoutingError, decodePayload } from '../src/index.js';

const apiUrl = process.env.ROUTING_API_URL;
const wsUrl = process.env.ROUTING_WS_URL;
if (!apiUrl || !wsUrl) throw new Error('set ROUTING_API_URL and ROUTING_WS_URL (see scripts/with-service.sh)');

const run = Date.now().toString(36);
const user = (name) => `urn:sm:user:${name}-${run}`;

async function devToken(sub) {
  const r = await fetch(apiUrl + '/demo/token', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ sub }),
  });
  assert.equal(r.status, 200);
  return (await r.json()).token;
}

async function clientFor(name, extra = {}) {
  const sub = user(name);
  return new RoutingClient({ apiUrl, wsUrl, token: await devToken(sub), renewToken: () => devToken(sub), ...extra });
}

function waitFor(cond, what, ms = 10000) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + ms;
    const tick = () => {
      if (cond()) return resolve();
      if (Date.now() > deadline) return reject(new Error('timed out waiting for ' + what));
      setTimeout(tick, 10);
    };
    tick();
  });
}

const text = (env) => new TextDecoder().decode(decodePayload(env.payload));

test('send, fetch, ack over HTTP', async () => {
  const alice = await clientFor('alice');
  const bob = await clientFor('bob');
  const acc = await alice.send({ recipient: user('bob'), payload: 'over http', type: 'chat', idempotencyKey: 'k-' + run });
  const again = await alice.send({ recipient: user('bob'), payload: 'over http', type: 'chat', idempotencyKey: 'k-' + run });
  assert.equal(again.id, acc.id, 'idempotent retry gives the same id');
  const page = await bob.fetch({ limit: 10 });
  assert.deepEqual(page.messages.map((m) => m.id), [acc.id]);
  assert.equal(text(page.messages[0]), 'over http');
  assert.equal(page.messages[0].sender, user('alice'));
  await bob.ack([acc.id]);
  assert.equal((await bob.fetch()).messages.length, 0);
});

test('errors come back as RoutingError', async () => {
  const alice = await clientFor('alice');
  await assert.rejects(alice.send({ recipient: 'not-a-urn', payload: 'x' }), (e) => e instanceof RoutingError && e.status === 400);
  const bad = new RoutingClient({ apiUrl, token: 'not.a.token' });
  await assert.rejects(bad.fetch(), (e) => e.status === 401 && e.code === 'unauthorized');
});

test('a refused token is renewed through the callback', async () => {
  let renewals = 0;
  const c = new RoutingClient({ apiUrl, token: 'expired.or.bad', renewToken: async () => { renewals++; return devToken(user('carol')); } });
  const page = await c.fetch();
  assert.deepEqual(page.messages, []);
  assert.equal(renewals, 1);
});

test('VAPID key and Web Push registration', async () => {
  const bob = await clientFor('bob');
  const key = await bob.vapidPublicKey();
  assert.match(key, /^[A-Za-z0-9_-]{86,88}$/);
  const subscription = {
    endpoint: 'https://push.example.test/send/' + run,
    keys: { p256dh: key, auth: 'AAAAAAAAAAAAAAAAAAAAAA' },
  };
  await bob.putWebPush(subscription);
  await bob.deleteWebPush(subscription);
});

test('subscribe: backlog then live, auto-acked, across a reconnect', async () => {
  const alice = await clientFor('alice');
  const bob = await clientFor('bob');
  const first = await alice.send({ recipient: user('bob'), payload: 'waiting' });
  const got = [];
  const states = [];
  const sub = bob.subscribe({ autoAck: true, onMessage: (e) => got.push(e), onState: (s) => states.push(s), minBackoff: 20, maxBackoff: 200 });
  try {
    await waitFor(() => got.length === 1, 'the backlog');
    assert.equal(got[0].id, first.id);
    const live = await alice.send({ recipient: user('bob'), payload: 'live' });
    await waitFor(() => got.length === 2, 'the live message');
    assert.equal(got[1].id, live.id);
    assert.equal(text(got[1]), 'live');
    // Cut the connection from this side: the subscription comes back.
    sub.ws.close(4000, 'test cut');
    await waitFor(() => states.filter((s) => s === 'open').length === 2, 'a reconnect');
    const after = await alice.send({ recipient: user('bob'), payload: 'after' });
    await waitFor(() => got.length === 3, 'a message after the reconnect');
    assert.equal(got[2].id, after.id);
  } finally {
    sub.close();
  }
  let pending = -1;
  const deadline = Date.now() + 10000;
  while (Date.now() < deadline) {
    pending = (await bob.fetch()).messages.length;
    if (pending === 0) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal(pending, 0, 'auto-acked messages left the queue');
});

test('send goes over the open WebSocket: answered by the service, delivered live; a refusal is a RoutingError', async () => {
  const alice = await clientFor('alice-ws');
  const bob = await clientFor('bob-ws');
  const got = [];
  const bsub = bob.subscribe({ autoAck: true, onMessage: (e) => got.push(e) });
  const asub = alice.subscribe({ onMessage: () => {} });
  try {
    await waitFor(() => bsub.connected && asub.connected, 'both connections');
    const acc = await alice.send({ recipient: user('bob-ws'), payload: 'over the socket', type: 'chat', idempotencyKey: 'ws-' + run });
    assert.equal(acc.via, 'websocket');
    await waitFor(() => got.some((e) => e.id === acc.id), 'the message live');
    const env = got.find((e) => e.id === acc.id);
    assert.equal(text(env), 'over the socket');
    assert.equal(env.sender, user('alice-ws'));
    const again = await alice.send({ recipient: user('bob-ws'), payload: 'over the socket', type: 'chat', idempotencyKey: 'ws-' + run });
    assert.deepEqual(again, acc, 'the same key answers the same id');
    // Many in flight at once, each answered.
    const many = await Promise.all([...Array(20).keys()].map((i) => alice.send({ recipient: user('bob-ws'), payload: 'n' + i })));
    assert.equal(new Set(many.map((a) => a.id)).size, 20);
    assert.ok(many.every((a) => a.via === 'websocket'));
    await waitFor(() => many.every((a) => got.some((e) => e.id === a.id)), 'the 20 messages live');
    await assert.rejects(alice.send({ recipient: 'not-a-urn', payload: 'x' }),
      (e) => e instanceof RoutingError && e.status === 400 && e.code === 'invalid_recipient');
    assert.ok(asub.connected, 'the connection stays open after a refused send');
  } finally {
    asub.close();
    bsub.close();
  }
  // Closed: over HTTP.
  const http = await alice.send({ recipient: user('bob-ws'), payload: 'over http' });
  assert.equal(http.via, 'http');
});

test('sendBatch: one message per device, all accepted together; a bad one names its index and nothing is accepted', async () => {
  const alice = await clientFor('alice-batch');
  const phone = await clientFor('carol-phone');
  const laptop = await clientFor('carol-laptop');
  const msgs = [
    { recipient: user('carol-phone'), payload: 'for the phone', type: 'chat', idempotencyKey: 'g1-phone-' + run },
    { recipient: user('carol-laptop'), payload: 'for the laptop', type: 'chat', idempotencyKey: 'g1-laptop-' + run },
  ];
  const accs = await alice.sendBatch(msgs);
  assert.equal(accs.length, 2);
  assert.deepEqual((await phone.fetch()).messages.map((m) => m.id), [accs[0].id]);
  assert.deepEqual((await laptop.fetch()).messages.map((m) => m.id), [accs[1].id]);
  assert.deepEqual(await alice.sendBatch(msgs), accs, 'the batch again answers the same');
  assert.equal((await phone.fetch()).messages.length, 1, 'no second copy');
  await assert.rejects(alice.sendBatch([msgs[0], { recipient: 'nope', payload: 'x' }]),
    (e) => e instanceof RoutingError && e.status === 400 && e.index === 1);
});
