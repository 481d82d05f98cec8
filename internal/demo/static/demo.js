import { RoutingClient, decodePayload, encodePayload } from './routing-client.js';

const $ = (id) => document.getElementById(id);
const urn = (name) => (name.startsWith('urn:') ? name : `urn:sm:user:${name.trim()}`);
const log = (line) => {
  const el = $('log');
  el.textContent += `${new Date().toLocaleTimeString()} ${line}\n`;
  el.scrollTop = el.scrollHeight;
};

/** @type {RoutingClient|null} */
let client = null;
let me = ''; // the signed-in user's URN
/** @type {import('./routing-client.js').Subscription|null} */
let sub = null;
let openedAt = 0;
let online = true;
let generation = 0; // callbacks of a closed subscription are ignored
/** @type {Map<string, HTMLLIElement>} */
const shown = new Map();

async function devToken(sub) {
  const r = await fetch('/demo/token', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ sub }),
  });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
  return body;
}

function setStatus(s) {
  const el = $('status');
  el.textContent = s;
  el.className = s;
  document.body.dataset.status = s;
}

// show adds a message to the conversation: one received (how: live,
// backlog, fetched), or one of the user's own (how: sent).
function show(env, how) {
  if (shown.has(env.id)) return shown.get(env.id);
  const li = document.createElement('li');
  li.dataset.id = env.id;
  const text = new TextDecoder().decode(decodePayload(env.payload));
  const name = (u) => u.replace(/^urn:sm:user:/, '');
  const from = env.sender === me ? `you → ${name(env.recipient)}` : name(env.sender);
  if (env.sender === me) li.dataset.mine = 'true';
  li.innerHTML = '<b class="from"></b>: <span class="text"></span> <span class="meta how"></span> <span class="meta state"></span>';
  li.querySelector('.from').textContent = from;
  li.querySelector('.text').textContent = text;
  li.querySelector('.how').textContent = how;
  if (how === 'backlog') li.querySelector('.how').classList.add('backlog');
  $('inbox').append(li);
  shown.set(env.id, li);
  return li;
}

function markAcked(ids) {
  for (const id of ids) {
    const li = shown.get(id);
    if (!li) continue;
    li.dataset.acked = 'true';
    const st = li.querySelector('.state');
    st.textContent = '✓ acknowledged';
    st.classList.add('acked');
  }
}

function connect() {
  const autoAck = $('autoack').checked;
  const gen = ++generation;
  sub = client.subscribe({
    autoAck,
    onState: (state, info) => {
      if (gen !== generation) return;
      if (state === 'open') openedAt = Date.now();
      setStatus(state);
      log(state + (info && info.code ? ` (${info.code}${info.reason ? ' ' + info.reason : ''})` : ''));
    },
    onError: (err) => log('error: ' + err.message),
    onMessage: (env) => {
      const how = Date.parse(env.created_at) < openedAt ? 'backlog' : 'live';
      const li = show(env, how);
      log(`received ${env.id} (${how})`);
      if (autoAck) {
        // The subscription acks right after this callback returns.
        queueMicrotask(() => markAcked([env.id]));
      } else {
        const b = document.createElement('button');
        b.textContent = 'ack';
        b.onclick = async () => { await sub.ack([env.id]); b.remove(); markAcked([env.id]); };
        li.append(' ', b);
      }
    },
  });
}

$('signin-btn').onclick = async () => {
  const who = urn($('user').value);
  try {
    const first = await devToken(who);
    me = who;
    generation++;
    if (sub) sub.close();
    shown.clear();
    $('inbox').replaceChildren();
    const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.hostname}:${first.ws_port}`;
    client = new RoutingClient({
      apiUrl: location.origin,
      wsUrl,
      token: first.token,
      renewToken: async () => { log('renewing token'); return (await devToken(who)).token; },
    });
    $('me').textContent = `signed in as ${me}; token until ${new Date(first.expires_at).toLocaleTimeString()}`;
    document.title = `${me.replace(/^urn:sm:user:/, '')} · routingservice demo`;
    $('conn').disabled = false;
    $('compose').disabled = false;
    if ($('to').value === $('user').value) $('to').value = $('user').value === 'bob' ? 'alice' : 'bob';
    online = true;
    $('online-btn').textContent = 'Go offline';
    connect();
  } catch (err) {
    log('sign in failed: ' + err.message);
  }
};

$('online-btn').onclick = () => {
  online = !online;
  if (online) {
    connect();
    $('online-btn').textContent = 'Go offline';
  } else {
    generation++;
    sub.close();
    sub = null;
    setStatus('offline');
    log('offline');
    $('online-btn').textContent = 'Go online';
  }
};

$('autoack').onchange = () => {
  if (online && sub) { generation++; sub.close(); connect(); }
};

$('fetch-btn').onclick = async () => {
  try {
    const page = await client.fetch({ limit: 100 });
    log(`${page.messages.length} pending`);
    for (const env of page.messages) show(env, 'fetched');
  } catch (err) {
    log('fetch failed: ' + err.message);
  }
};

$('send-btn').onclick = async () => {
  const text = $('text').value;
  if (!text) return;
  const to = urn($('to').value);
  try {
    // Over the WebSocket while it is open (no request per message), else
    // over HTTP.
    const acc = await client.send({ recipient: to, payload: text, type: 'chat' });
    const via = acc.via === 'websocket' ? 'the WebSocket' : 'HTTP';
    $('sent').textContent = `sent ${acc.id} over ${via}`;
    $('text').value = '';
    const li = show({ id: acc.id, sender: me, recipient: to, payload: encodePayload(text), created_at: acc.created_at }, 'sent');
    li.dataset.via = acc.via || '';
    log(`sent ${acc.id} over ${via}`);
  } catch (err) {
    $('sent').textContent = 'failed: ' + err.message;
    log('send failed: ' + err.message);
  }
};
$('text').onkeydown = (e) => { if (e.key === 'Enter') $('send-btn').click(); };

// Web Push: offered where the browser has it (and on a secure context:
// http://localhost and http://127.0.0.1 count as secure).
if ('serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window) {
  $('push-btn').hidden = false;
  $('push-btn').onclick = async () => {
    try {
      const perm = await Notification.requestPermission();
      if (perm !== 'granted') { $('push-state').textContent = `notifications ${perm}`; return; }
      const reg = await navigator.serviceWorker.register('sw.js', { scope: './' });
      await navigator.serviceWorker.ready;
      await client.registerWebPush(reg);
      $('push-state').textContent = 'push registered: you are woken when offline';
      log('web push subscription registered');
    } catch (err) {
      $('push-state').textContent = 'push unavailable: ' + err.message;
      log('web push failed: ' + err.message);
    }
  };
} else {
  $('push-state').textContent = 'this browser has no Web Push';
}
