// Drives the demo at /demo/ in a real Chromium: two pages, alice and bob.
// Runs against a running service (ROUTING_API_URL, ROUTING_WS_URL; see
// scripts/with-service.sh). Chromium: $CHROMIUM, default /usr/bin/chromium
// (Debian's package). Screenshots go to test-artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const apiUrl = process.env.ROUTING_API_URL;
const wsUrl = process.env.ROUTING_WS_URL;
if (!apiUrl || !wsUrl) throw new Error('set ROUTING_API_URL and ROUTING_WS_URL (see scripts/with-service.sh)');
const artifacts = join(dirname(fileURLToPath(import.meta.url)), '..', 'test-artifacts');
mkdirSync(artifacts, { recursive: true });

const TIMEOUT = 15000;
let context;
let profile;

before(async () => {
  profile = mkdtempSync(join(tmpdir(), 'routing-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 900, height: 800 },
  });
  context.setDefaultTimeout(TIMEOUT);
});

after(async () => {
  await context?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

async function signIn(name) {
  const page = await context.newPage();
  page.on('pageerror', (err) => console.error(`[${name}] page error:`, err));
  await page.goto(apiUrl + '/demo/');
  await page.fill('#user', name);
  await page.click('#signin-btn');
  await page.waitForSelector('body[data-status="open"]', { state: 'attached' });
  return page;
}

async function send(page, to, text) {
  const before = await page.textContent('#sent');
  await page.fill('#to', to);
  await page.fill('#text', text);
  await page.click('#send-btn');
  await page.waitForFunction((b) => {
    const t = document.getElementById('sent').textContent;
    return t !== b && t.startsWith('sent ');
  }, before);
}

const inbox = (page) => page.$$eval('#inbox li', (lis) => lis.map((li) => ({
  from: li.querySelector('.from').textContent,
  text: li.querySelector('.text').textContent,
  how: li.querySelector('.how').textContent,
  acked: li.dataset.acked === 'true',
})));

test('alice and bob chat: live, then backlog after bob was offline', async () => {
  const alice = await signIn('alice');
  const bob = await signIn('bob');

  await send(alice, 'bob', 'hello bob');
  // The page sends over its open WebSocket, and shows the sender's own
  // message in the conversation.
  assert.match(await alice.textContent('#sent'), /^sent \S+ over the WebSocket$/);
  assert.deepEqual((await inbox(alice)).map(({ from, text, how }) => ({ from, text, how })),
    [{ from: 'you → bob', text: 'hello bob', how: 'sent' }]);
  await bob.waitForFunction(() => document.querySelectorAll('#inbox li').length === 1);
  let got = await inbox(bob);
  assert.deepEqual(got.map(({ from, text, how }) => ({ from, text, how })), [{ from: 'alice', text: 'hello bob', how: 'live' }]);
  await bob.waitForSelector('#inbox li[data-acked="true"]', { state: 'attached' });
  await bob.screenshot({ path: join(artifacts, 'bob-live.png') });

  await bob.click('#online-btn');
  await bob.waitForSelector('body[data-status="offline"]', { state: 'attached' });
  await send(alice, 'bob', 'first while away');
  await send(alice, 'bob', 'second while away');
  await alice.screenshot({ path: join(artifacts, 'alice-sent.png') });
  assert.equal((await inbox(bob)).length, 1, 'an offline page receives nothing');

  await bob.click('#online-btn');
  await bob.waitForSelector('body[data-status="open"]', { state: 'attached' });
  await bob.waitForFunction(() => document.querySelectorAll('#inbox li').length === 3);
  got = await inbox(bob);
  assert.deepEqual(got.slice(1).map(({ text, how }) => ({ text, how })), [
    { text: 'first while away', how: 'backlog' },
    { text: 'second while away', how: 'backlog' },
  ]);
  await bob.waitForFunction(() => document.querySelectorAll('#inbox li[data-acked="true"]').length === 3);
  await bob.screenshot({ path: join(artifacts, 'bob-backlog.png') });

  // bob answers, over his WebSocket; alice sees it live.
  await send(bob, 'alice', 'back now');
  assert.match(await bob.textContent('#sent'), /over the WebSocket$/);
  assert.equal(await bob.getAttribute('#inbox li[data-mine="true"]', 'data-via'), 'websocket');
  await alice.waitForFunction(() => [...document.querySelectorAll('#inbox li .text')].some((e) => e.textContent === 'back now'));
  await alice.screenshot({ path: join(artifacts, 'alice-reply.png') });
  await alice.close();
  await bob.close();
});

test('a page from an origin that is not allowed cannot open the WebSocket', async () => {
  const tokenResp = await fetch(apiUrl + '/demo/token', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ sub: 'urn:sm:user:mallory' }),
  });
  const { token } = await tokenResp.json();
  // The probe shows what it tries and what happened, so that the
  // screenshot of the refusal is not a blank page.
  const probe = (url) => `
    <!doctype html><title>probe</title><body style="font: 16px sans-serif; margin: 2em">
    <h1>WebSocket from <span id="origin"></span></h1>
    <p>to ${new URL(url).origin}/v1/connect</p>
    <p>result: <strong id="result">connecting</strong></p>
    <script>
      document.getElementById('origin').textContent = location.origin;
      const show = (r) => { document.getElementById('result').textContent = r; document.body.dataset.result = r; };
      const ws = new WebSocket(${JSON.stringify(url)});
      ws.onopen = () => show('open');
      ws.onclose = (e) => { if (!document.body.dataset.result) show('closed ' + e.code + ' (refused)'); };
    </script></body>`;
  const url = `${wsUrl}/v1/connect?access_token=${encodeURIComponent(token)}`;

  const page = await context.newPage();
  // The browser believes it loaded this page from http://evil.test.
  await page.route('http://evil.test/**', (route) => route.fulfill({ contentType: 'text/html', body: probe(url) }));
  await page.goto('http://evil.test/');
  await page.waitForSelector('body[data-result]', { state: 'attached' });
  const refused = await page.getAttribute('body', 'data-result');
  assert.equal(refused, 'closed 1006 (refused)', 'the upgrade from http://evil.test is refused');
  assert.match(await page.textContent('body'), /WebSocket from http:\/\/evil\.test/, 'the page shows what it tried');
  await page.screenshot({ path: join(artifacts, 'refused-origin.png') });

  // The same probe from the demo's own origin opens: the refusal is the origin's.
  await page.goto(apiUrl + '/demo/');
  await page.setContent(probe(url));
  await page.waitForSelector('body[data-result]', { state: 'attached' });
  assert.equal(await page.getAttribute('body', 'data-result'), 'open');
  await page.close();
});
