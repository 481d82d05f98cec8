// JavaScript client of the routing service's v1 API: send (over the open
// WebSocket, else HTTP), send a batch, fetch and acknowledge messages,
// register Web Push subscriptions, and receive messages live over a
// WebSocket that reconnects by itself.
// No dependencies: it needs fetch and WebSocket (browsers, Node 22+, or
// Node 20 with --experimental-websocket, or pass your own).

/**
 * One message as the service delivers it.
 * @typedef {object} Envelope
 * @property {string} id          server-assigned, unique; deduplicate by it
 * @property {string} sender      URN of the sender
 * @property {string} recipient   URN of the recipient
 * @property {string} [type]      free text, opaque to the service
 * @property {string} payload     standard base64 (see decodePayload)
 * @property {boolean} [ephemeral]
 * @property {string} created_at  RFC 3339 time the service accepted it
 */

/**
 * @typedef {object} SendOptions
 * @property {string} recipient                  URN
 * @property {Uint8Array|string} payload         bytes, or a string sent as its UTF-8 bytes
 * @property {string} [type]
 * @property {boolean} [ephemeral]
 * @property {string} [idempotencyKey]           1-64 of [A-Za-z0-9_-]: a retry returns the same answer
 */

/**
 * The answer to a send.
 * @typedef {object} Accepted
 * @property {string} id          the message's id
 * @property {string} created_at  RFC 3339 time the service accepted it
 * @property {'websocket'|'http'} [via]  how send() sent it (send() only)
 */

/**
 * @typedef {object} ClientOptions
 * @property {string} apiUrl     HTTP API base, e.g. "http://127.0.0.1:8082"
 * @property {string} [wsUrl]    WebSocket base, e.g. "ws://127.0.0.1:8085"
 * @property {string} token      the caller's JWT
 * @property {() => Promise<string>} [renewToken]  returns a fresh token; called on 401 and when a session ends with "token expired"
 * @property {typeof globalThis.fetch} [fetch]          defaults to globalThis.fetch
 * @property {typeof globalThis.WebSocket} [WebSocket]  defaults to globalThis.WebSocket
 * @property {boolean} [retryUnanswered]  send() gives a message without an idempotencyKey a random one, and sends a message
 *   again over HTTP, once, when its WebSocket closed before the answer (instead of rejecting with SendUnansweredError)
 */

/**
 * @typedef {object} SubscribeOptions
 * @property {(env: Envelope) => void} onMessage     called once per message id
 * @property {(state: 'connecting'|'open'|'closed', info?: {code?: number, reason?: string}) => void} [onState]
 * @property {(err: Error) => void} [onError]       errors the subscription cannot fix by reconnecting, and error frames
 * @property {boolean} [autoAck]   acknowledge each message after onMessage returns (default false)
 * @property {number} [minBackoff] ms, default 250
 * @property {number} [maxBackoff] ms, default 30000
 * @property {number} [remember]   message ids kept to drop repeats, default 10000
 */

/** An error answer of the service (over HTTP, or a send_error over the WebSocket). */
export class RoutingError extends Error {
  /**
   * @param {number} status HTTP status (for a send_error: the status POST /v1/messages answers with its code)
   * @param {string} code   snake_case error code
   * @param {string} message
   * @param {number} [retryAfter] seconds, from Retry-After (or a send_error's retry_after)
   * @param {number} [index] sendBatch: the message at fault (0-based)
   */
  constructor(status, code, message, retryAfter, index) {
    super(`routing service: ${status} ${code}: ${index === undefined ? '' : `message ${index}: `}${message}`);
    this.name = 'RoutingError';
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    this.index = index;
  }
}

/**
 * A send over the WebSocket whose connection closed before the service
 * answered: it may or may not have been accepted. Send it again with the
 * same idempotencyKey to learn which without delivering it twice.
 */
export class SendUnansweredError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(`routing service: ${message}`);
    this.name = 'SendUnansweredError';
    this.code = 'unanswered';
  }
}

/** @type {Record<string, number>} the HTTP status of each error code */
const statusOfCode = {
  malformed_json: 400, bad_request: 400, invalid_recipient: 400, invalid_payload: 400, invalid_parameter: 400,
  payload_too_large: 413, body_too_large: 413, batch_too_large: 413, idempotency_key_reused: 409,
  rate_limited: 429, recipient_queue_full: 429, sender_quota_exceeded: 429, backend_unavailable: 503, internal_error: 500,
};

/**
 * A random idempotency key: 22 characters of [A-Za-z0-9_-].
 * @returns {string}
 */
export function randomKey() {
  const b = new Uint8Array(16);
  globalThis.crypto.getRandomValues(b);
  return encodePayload(b).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/**
 * The body of POST /v1/messages (and a send frame's message) for m.
 * @param {SendOptions} m
 * @returns {Record<string, unknown>}
 */
function messageBody(m) {
  /** @type {Record<string, unknown>} */
  const body = { recipient: m.recipient, payload: encodePayload(m.payload) };
  if (m.type) body.type = m.type;
  if (m.ephemeral) body.ephemeral = true;
  if (m.idempotencyKey) body.idempotency_key = m.idempotencyKey;
  return body;
}

/**
 * A random wait in [0, min(max, min·2^attempt)) ms ("full jitter"), so
 * clients cut off together do not come back together.
 * @param {number} attempt failed attempts so far
 * @param {number} min
 * @param {number} max
 * @param {() => number} [random]
 * @returns {number}
 */
export function backoff(attempt, min, max, random = Math.random) {
  const ceiling = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/**
 * Encodes bytes or a string (as UTF-8) as standard base64.
 * @param {Uint8Array|string} data
 * @returns {string}
 */
export function encodePayload(data) {
  const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin);
}

/**
 * Decodes a standard base64 payload to bytes.
 * @param {string} b64
 * @returns {Uint8Array}
 */
export function decodePayload(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/**
 * Decodes a base64url string (no padding) to bytes, as
 * pushManager.subscribe wants the VAPID key.
 * @param {string} s
 * @returns {Uint8Array}
 */
export function base64UrlToBytes(s) {
  const b64 = s.replace(/-/g, '+').replace(/_/g, '/');
  return decodePayload(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
}

/**
 * The expiry of a JWT in ms since the epoch, read without verifying it;
 * undefined when the token has none or is not a JWT.
 * @param {string} token
 * @returns {number|undefined}
 */
export function tokenExpiry(token) {
  try {
    const part = token.split('.')[1];
    const claims = JSON.parse(new TextDecoder().decode(base64UrlToBytes(part)));
    return typeof claims.exp === 'number' ? claims.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/** A client of one service, authenticated as one URN. */
export class RoutingClient {
  /** @param {ClientOptions} opts */
  constructor(opts) {
    if (!opts || !opts.apiUrl) throw new TypeError('RoutingClient: apiUrl is required');
    if (!opts.token && !opts.renewToken) throw new TypeError('RoutingClient: token or renewToken is required');
    this.apiUrl = opts.apiUrl.replace(/\/$/, '');
    this.wsUrl = (opts.wsUrl || '').replace(/\/$/, '');
    this.token = opts.token || '';
    this.renewToken = opts.renewToken;
    this._fetch = opts.fetch || globalThis.fetch.bind(globalThis);
    this._WebSocket = opts.WebSocket || globalThis.WebSocket;
    this.retryUnanswered = !!opts.retryUnanswered;
    /** @type {Promise<string>|null} */
    this._renewing = null;
    /** @type {Subscription|null} the latest subscription: send() goes over its connection while it is open */
    this._subscription = null;
  }

  /**
   * Replaces the token with one from renewToken; concurrent callers share
   * one renewal.
   * @returns {Promise<string>}
   */
  async renew() {
    if (!this.renewToken) throw new RoutingError(401, 'unauthorized', 'token refused and no renewToken');
    if (!this._renewing) {
      this._renewing = (async () => {
        try {
          const tok = await this.renewToken();
          if (!tok) throw new Error('renewToken returned no token');
          this.token = tok;
          return tok;
        } finally {
          this._renewing = null;
        }
      })();
    }
    return this._renewing;
  }

  /**
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   * @returns {Promise<any>}
   */
  async _request(method, path, body) {
    const send = () => {
      /** @type {Record<string,string>} */
      const headers = { Authorization: `Bearer ${this.token}` };
      if (body !== undefined) headers['Content-Type'] = 'application/json';
      return this._fetch(this.apiUrl + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    };
    let resp = await send();
    if (resp.status === 401 && this.renewToken) {
      // A refused token means nothing was done: renew and try once more.
      await this.renew();
      resp = await send();
    }
    if (resp.status >= 300) throw await errorOf(resp);
    if (resp.status === 204) return undefined;
    return resp.json();
  }

  /**
   * Sends a message; the sender is the token's subject. It goes over the
   * subscription's WebSocket while one is open (no request, no token
   * check per message; several may be in flight), over HTTP otherwise.
   * Rejects with a RoutingError the service's refusal, and with a
   * SendUnansweredError a send whose WebSocket closed before its answer
   * (unless retryUnanswered sends it again over HTTP).
   * @param {SendOptions} m
   * @returns {Promise<Accepted>}
   */
  async send(m) {
    if (this.retryUnanswered && !m.idempotencyKey) m = { ...m, idempotencyKey: randomKey() };
    const sub = this._subscription;
    if (sub && sub.connected) {
      try {
        return { ...(await sub.send(m)), via: 'websocket' };
      } catch (err) {
        if (!(err instanceof SendUnansweredError) || !this.retryUnanswered) throw err;
      }
    }
    return { ...(await this._request('POST', '/v1/messages', messageBody(m))), via: 'http' };
  }

  /**
   * Sends many messages in one request (POST /v1/messages/batch), e.g. a
   * group message fanned out to each member device's URN with its own
   * ciphertext: all are accepted in one durable commit, or none is. The
   * answers are in the order of the messages. A RoutingError whose index
   * is set names the message at fault; give each message an
   * idempotencyKey to make sending the batch again safe.
   * @param {SendOptions[]} messages
   * @returns {Promise<{id: string, created_at: string}[]>}
   */
  async sendBatch(messages) {
    const r = await this._request('POST', '/v1/messages/batch', { messages: messages.map(messageBody) });
    return r.messages;
  }

  /**
   * One page of the caller's pending messages, oldest first.
   * @param {{limit?: number, after?: string}} [opts]
   * @returns {Promise<{messages: Envelope[], next_cursor: string}>}
   */
  fetch(opts = {}) {
    const q = new URLSearchParams();
    if (opts.limit) q.set('limit', String(opts.limit));
    if (opts.after) q.set('after', opts.after);
    const qs = q.toString();
    return this._request('GET', '/v1/messages' + (qs ? '?' + qs : ''));
  }

  /**
   * Acknowledges messages: they leave the caller's queue.
   * @param {string[]} ids
   * @returns {Promise<void>}
   */
  ack(ids) {
    return this._request('POST', '/v1/messages/ack', { ids });
  }

  /**
   * The service's VAPID public key (base64url).
   * @returns {Promise<string>}
   */
  async vapidPublicKey() {
    const r = await this._request('GET', '/v1/push/vapid-public-key');
    return r.public_key;
  }

  /**
   * Subscribes a service worker registration to Web Push with the
   * service's VAPID key and registers the subscription with the service.
   * The caller asks for Notification permission first.
   * @param {ServiceWorkerRegistration} registration
   * @returns {Promise<PushSubscription>}
   */
  async registerWebPush(registration) {
    const key = await this.vapidPublicKey();
    const sub = await registration.pushManager.subscribe({
      userVisibleOnly: true,
      applicationServerKey: base64UrlToBytes(key),
    });
    await this.putWebPush(sub.toJSON());
    return sub;
  }

  /**
   * Registers a Web Push subscription (PushSubscription.toJSON()).
   * @param {{endpoint?: string, keys?: Record<string,string>}} subscription
   * @returns {Promise<void>}
   */
  putWebPush(subscription) {
    return this._request('PUT', '/v1/devices', { platform: 'webpush', subscription: pickSubscription(subscription) });
  }

  /**
   * Unregisters a Web Push subscription.
   * @param {{endpoint?: string, keys?: Record<string,string>}} subscription
   * @returns {Promise<void>}
   */
  deleteWebPush(subscription) {
    return this._request('DELETE', '/v1/devices', { platform: 'webpush', subscription: pickSubscription(subscription) });
  }

  /**
   * Receives messages live: the backlog first, then live messages. The
   * subscription reconnects with backoff and jitter after a lost
   * connection, renews the token when the session ends with "token
   * expired", and calls onMessage once per id.
   * @param {SubscribeOptions} opts
   * @returns {Subscription}
   */
  subscribe(opts) {
    const sub = new Subscription(this, opts);
    this._subscription = sub;
    return sub;
  }
}

/** @param {{endpoint?: string, keys?: Record<string,string>}} s */
function pickSubscription(s) {
  return { endpoint: s.endpoint, keys: { p256dh: s.keys?.p256dh, auth: s.keys?.auth } };
}

/**
 * @param {Response} resp
 * @returns {Promise<RoutingError>}
 */
async function errorOf(resp) {
  let code = 'http_' + resp.status;
  let message = resp.statusText || '';
  /** @type {number|undefined} */
  let index;
  try {
    const body = await resp.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
      if (typeof body.error.index === 'number') index = body.error.index;
    }
  } catch {
    // not JSON: keep the status
  }
  const ra = Number.parseInt(resp.headers.get('Retry-After') || '', 10);
  return new RoutingError(resp.status, code, message, Number.isNaN(ra) ? undefined : ra, index);
}

/** A live WebSocket subscription; see RoutingClient.subscribe. */
export class Subscription {
  /**
   * @param {RoutingClient} client
   * @param {SubscribeOptions} opts
   */
  constructor(client, opts) {
    if (!client.wsUrl) throw new TypeError('RoutingClient: wsUrl is required to subscribe');
    if (!opts || typeof opts.onMessage !== 'function') throw new TypeError('subscribe: onMessage is required');
    this.client = client;
    this.opts = { autoAck: false, minBackoff: 250, maxBackoff: 30000, remember: 10000, ...opts };
    /** @type {WebSocket|null} */
    this.ws = null;
    this.closed = false;
    /** failed attempts since the last message or open */
    this.attempt = 0;
    /** @type {Set<string>} */
    this.seen = new Set();
    /** @type {ReturnType<typeof setTimeout>|null} */
    this.timer = null;
    /** @type {Map<string, {resolve: (a: {id: string, created_at: string}) => void, reject: (e: Error) => void}>} sends awaiting their answer, by ref */
    this.pending = new Map();
    this.refs = 0;
    this._connect();
  }

  /** @returns {boolean} whether a connection is open */
  get connected() {
    return !!this.ws && this.ws.readyState === 1;
  }

  /**
   * Acknowledges messages over the open connection, or over HTTP while
   * there is none.
   * @param {string[]} ids
   * @returns {Promise<void>}
   */
  async ack(ids) {
    if (this.connected && this.ws) {
      this.ws.send(JSON.stringify({ type: 'ack', ids }));
      return;
    }
    await this.client.ack(ids);
  }

  /**
   * Sends a message over the open connection and resolves with the
   * service's answer, matched by a ref of its own (several sends may be in
   * flight). Rejects with a RoutingError the service's refusal (the code
   * and status POST /v1/messages answers), and with a SendUnansweredError
   * when the connection closes before the answer. Without an open
   * connection it rejects at once (RoutingClient.send goes over HTTP then).
   * @param {SendOptions} m
   * @returns {Promise<{id: string, created_at: string}>}
   */
  send(m) {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) return Promise.reject(new SendUnansweredError('no open connection; nothing was sent'));
    const ref = (++this.refs).toString(36);
    return new Promise((resolve, reject) => {
      this.pending.set(ref, { resolve, reject });
      try {
        ws.send(JSON.stringify({ type: 'send', ref, message: messageBody(m) }));
      } catch (err) {
        this.pending.delete(ref);
        reject(new SendUnansweredError('the connection failed while sending: ' + /** @type {Error} */ (err).message));
      }
    });
  }

  /** Closes the connection for good. */
  close() {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.ws) this.ws.close(1000);
    this.ws = null;
    this._unanswered('subscription closed');
    if (this.client._subscription === this) this.client._subscription = null;
  }

  /**
   * Rejects the sends still waiting for an answer: their connection ended.
   * @param {string} why
   */
  _unanswered(why) {
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) {
      p.reject(new SendUnansweredError(`${why} before the send was answered; it may have been accepted: send it again with the same idempotencyKey`));
    }
  }

  /** @param {'connecting'|'open'|'closed'} s @param {{code?: number, reason?: string}} [info] */
  _state(s, info) {
    if (this.opts.onState) this.opts.onState(s, info);
  }

  async _connect() {
    if (this.closed) return;
    const c = this.client;
    const exp = tokenExpiry(c.token);
    if (c.renewToken && (!c.token || (exp !== undefined && exp <= Date.now()))) {
      try {
        await c.renew();
      } catch (err) {
        this._fail(/** @type {Error} */ (err));
        return;
      }
      if (this.closed) return;
    }
    this._state('connecting');
    const url = `${c.wsUrl}/v1/connect?access_token=${encodeURIComponent(c.token)}`;
    let ws;
    try {
      ws = new c._WebSocket(url);
    } catch (err) {
      this._fail(/** @type {Error} */ (err));
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.attempt = 0;
      this._state('open');
    };
    ws.onmessage = (ev) => this._frame(ws, ev.data);
    ws.onclose = (ev) => {
      if (this.ws === ws) this.ws = null;
      this._unanswered(`connection closed (${ev.code})`);
      this._state('closed', { code: ev.code, reason: ev.reason });
      if (this.closed) return;
      if (ev.code === 1008 && ev.reason === 'token expired') {
        if (!c.renewToken) {
          this._fail(new RoutingError(401, 'token_expired', 'session ended: token expired and no renewToken'));
          return;
        }
        c.renew().then(() => this._connect(), (err) => this._fail(err));
        return;
      }
      if (!opened) this.attempt++;
      this._schedule();
    };
    ws.onerror = () => {
      // onclose follows and decides.
    };
  }

  _schedule() {
    if (this.closed) return;
    const wait = backoff(this.attempt, this.opts.minBackoff, this.opts.maxBackoff);
    this.timer = setTimeout(() => {
      this.timer = null;
      this._connect();
    }, wait);
  }

  /** @param {Error} err */
  _fail(err) {
    this.closed = true;
    if (this.opts.onError) this.opts.onError(err);
  }

  /**
   * @param {WebSocket} ws
   * @param {unknown} data
   */
  _frame(ws, data) {
    let f;
    try {
      f = JSON.parse(String(data));
    } catch {
      return;
    }
    if (f.type === 'error' && f.error) {
      if (this.opts.onError) this.opts.onError(new RoutingError(0, f.error.code, f.error.message));
      return;
    }
    if (f.type === 'sent' || f.type === 'send_error') {
      const p = this.pending.get(f.ref);
      if (!p) return;
      this.pending.delete(f.ref);
      if (f.type === 'sent') {
        p.resolve({ id: f.id, created_at: f.created_at });
      } else {
        const code = f.error?.code || 'send_error';
        p.reject(new RoutingError(statusOfCode[code] || 0, code, f.error?.message || '', f.retry_after));
      }
      return;
    }
    if (f.type !== 'message' || !f.message) return;
    /** @type {Envelope} */
    const env = f.message;
    if (this.seen.has(env.id)) {
      // A repeat (at-least-once delivery); ack again when acking for the
      // caller, since the first ack may have been lost with a connection.
      if (this.opts.autoAck) ws.send(JSON.stringify({ type: 'ack', ids: [env.id] }));
      return;
    }
    this.seen.add(env.id);
    if (this.seen.size > this.opts.remember) {
      const oldest = this.seen.values().next().value;
      if (oldest !== undefined) this.seen.delete(oldest);
    }
    this.opts.onMessage(env);
    if (this.opts.autoAck && ws.readyState === 1) ws.send(JSON.stringify({ type: 'ack', ids: [env.id] }));
  }
}
