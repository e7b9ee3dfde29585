// wsgate browser client: one ES module, no dependencies, no build step.
//
//   import { connect } from "/client.js";
//   const client = await connect("/ws", { token });
//   const sub = await client.subscribe("chat.*", (topic, data) => console.log(topic, data));
//   await client.publish("chat.lobby", { text: "hi" });
//   const sum = await client.call("math.add", [1, 2], { timeout: 5000 });
//
// It speaks the JSON encoding of the wire protocol (docs/protocol.md,
// subprotocol `wsgate.v1.json`) and mirrors the Python SDK
// (wsgate.sdk.client): one connection at a time, reopened after a
// reconnect-class close or a failed attempt with exponential backoff and full
// jitter (9.2); subscriptions are sent again after a reconnect; publishes and
// calls still waiting for an answer when a connection ends fail with
// ConnectionLost and are never retried; a terminal or application close ends
// the client (ConnectionClosed). Delivery is at most once.
//
// States (onState): "connecting" -> "connected" <-> "reconnecting"; any -> "closed".
// Times are milliseconds (backoffBase, backoffCap, timeout, pongTimeout).

export const SUBPROTOCOL = "wsgate.v1.json";

export const ClientState = Object.freeze({
  CONNECTING: "connecting",
  CONNECTED: "connected",
  RECONNECTING: "reconnecting",
  CLOSED: "closed",
});

/** Milliseconds a connection must stay open for the backoff to start again from 0. */
export const STABLE_AFTER = 30000;

/** The reply error code when a request handler fails unexpectedly. */
export const CLIENT_ERROR = "client_error";

const TOKEN_EXPIRED = 4003;
const KEEPALIVE_TIMEOUT = 4002;
const NORMAL = 1000;
const ABNORMAL = 1006;

/** The server (or a method) answered with an `error`. */
export class RemoteError extends Error {
  constructor(code, message = "", data = undefined) {
    super(message ? `${code}: ${message}` : code);
    this.name = "RemoteError";
    this.code = code;
    this.remoteMessage = message;
    this.data = data;
  }
}

/** The client ended with this close code (terminal, application, or close()). */
export class ConnectionClosed extends Error {
  constructor(code, reason = "") {
    super(`connection closed with ${code}${reason ? ` (${reason})` : ""}`);
    this.name = "ConnectionClosed";
    this.code = code;
    this.reason = reason;
  }
}

/** The connection ended before the answer came; the message is not retried. */
export class ConnectionLost extends Error {
  constructor(code, reason = "") {
    super(`connection lost (${code}${reason ? ` ${reason}` : ""}) before the answer`);
    this.name = "ConnectionLost";
    this.code = code;
    this.reason = reason;
  }
}

/** No answer within the timeout. */
export class RequestTimeout extends Error {
  constructor(what, timeout) {
    super(`${what}: no answer within ${timeout} ms`);
    this.name = "RequestTimeout";
    this.timeout = timeout;
  }
}

/** "reconnect", "terminal" or "application" (protocol.md 9.1). */
export function closeClass(code) {
  if (code === 1001 || code === 1006 || (code >= 1011 && code <= 1014)) return "reconnect";
  if (code >= 4000 && code <= 4099) return "reconnect";
  if (code >= 4500 && code <= 4999) return "application";
  return "terminal";
}

/** Full jitter: uniform(0, min(cap, base * 2 ** attempt)), attempt counted from 0. */
export function backoffDelay(attempt, base, cap, random = Math.random) {
  const ceiling = attempt >= 64 ? cap : Math.min(cap, base * 2 ** attempt);
  return random() * ceiling;
}

/** Whether a concrete topic matches a pattern (`*` one token, `>` one or more trailing). */
export function topicMatches(pattern, topic) {
  const p = pattern.split(".");
  const t = topic.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return i === p.length - 1 && t.length > i;
    if (i >= t.length) return false;
    if (p[i] !== "*" && p[i] !== t[i]) return false;
  }
  return p.length === t.length;
}

function isBytes(value) {
  return value instanceof Uint8Array || value instanceof ArrayBuffer;
}

function toBase64(value) {
  const bytes = value instanceof Uint8Array ? value : new Uint8Array(value);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

function fromBase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

/** Put a payload in `data`, or in `bin` (base64) when it is bytes (3.3). */
function withPayload(message, value) {
  if (isBytes(value)) message.bin = toBase64(value);
  else if (value !== undefined && value !== null) message.data = value;
  return message;
}

/** A message's payload: `bin` as a Uint8Array, else `data` (null when absent). */
function payloadOf(message) {
  if (typeof message.bin === "string") return fromBase64(message.bin);
  return message.data === undefined ? null : message.data;
}

function absoluteUrl(url) {
  const base = globalThis.location ? globalThis.location.href : undefined;
  const parsed = new URL(url, base);
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  else if (parsed.protocol === "https:") parsed.protocol = "wss:";
  return parsed;
}

/** One open WebSocket and what waits on it. */
class Connection {
  constructor(ws) {
    this.ws = ws;
    this.welcome = null;
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, timer}
    this.ended = null; // {code, reason} once over
    this.lastRecv = Date.now();
    this.pingSentAt = 0;
    this.keepalive = null;
  }

  send(message) {
    if (this.ended) throw new ConnectionLost(this.ended.code, this.ended.reason);
    this.ws.send(JSON.stringify(message));
  }

  /** Send `build(id)` and resolve with its `ok` (reject on `error`). */
  request(build, timeout, what) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer =
        timeout > 0
          ? setTimeout(() => {
              this.pending.delete(id);
              reject(new RequestTimeout(what, timeout));
            }, timeout)
          : null;
      this.pending.set(id, { resolve, reject, timer });
      try {
        this.send(build(id));
      } catch (error) {
        this.pending.delete(id);
        clearTimeout(timer);
        reject(error);
      }
    });
  }

  answer(message) {
    const waiter = this.pending.get(message.id);
    if (!waiter) return; // an answer nobody waits for (timed out)
    this.pending.delete(message.id);
    clearTimeout(waiter.timer);
    if (message.op === "ok") waiter.resolve(message);
    else waiter.reject(new RemoteError(message.code, message.message || "", message.data));
  }

  /** The connection is over: every waiter fails with ConnectionLost. Idempotent. */
  end(code, reason) {
    if (this.ended) return false;
    this.ended = { code, reason };
    clearInterval(this.keepalive);
    for (const waiter of this.pending.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(new ConnectionLost(code, reason));
    }
    this.pending.clear();
    return true;
  }
}

/** A connection to the gateway that reconnects by itself; made by connect(). */
export class Client {
  /**
   * @param {string} url ws://, wss://, http(s):// or a path such as "/ws" (resolved
   *   against the page; http becomes ws).
   * @param {object} options
   * @param {string} [options.token] sent as `?token=` (browsers cannot set headers).
   * @param {() => Promise<string>} [options.tokenProvider] called for a token before
   *   every attempt (instead of token); with it 4003 TOKEN_EXPIRED reconnects.
   * @param {(state: string, detail?: object) => void} [options.onState]
   * @param {number} [options.backoffBase=500] @param {number} [options.backoffCap=30000]
   * @param {boolean} [options.reconnect=true] false: the first failure ends the client.
   * @param {number} [options.timeout=10000] for answers, the default of call, and welcome.
   * @param {boolean} [options.keepalive=true] app-level `ping` after welcome.ping_interval
   *   seconds of silence; no answer within pongTimeout counts as a lost connection.
   * @param {number} [options.pongTimeout=10000]
   */
  constructor(url, options = {}) {
    const {
      token = null,
      tokenProvider = null,
      onState = null,
      backoffBase = 500,
      backoffCap = 30000,
      reconnect = true,
      timeout = 10000,
      keepalive = true,
      pongTimeout = 10000,
    } = options;
    if (!(backoffBase > 0 && backoffCap > 0 && timeout > 0)) {
      throw new TypeError("backoffBase, backoffCap and timeout must be positive");
    }
    this.url = url;
    this._token = token;
    this._tokenProvider = tokenProvider;
    this._onState = onState;
    this._backoff = [backoffBase, backoffCap];
    this._reconnect = reconnect;
    this._timeout = timeout;
    this._keepalive = keepalive;
    this._pongTimeout = pongTimeout;
    this.state = ClientState.CLOSED;
    this.error = null; // the ConnectionClosed that ended the client, if not close()
    this._welcome = null;
    this._conn = null;
    this._subs = new Map(); // pattern -> Set of {onMessage, active}
    this._pushCallbacks = [];
    this._requestHandler = null;
    this._readyWaiters = new Set();
    this._closing = false;
    this._finished = false;
    this._started = false;
    this._sleep = null; // {timer, resolve} while waiting out a backoff delay
    this.closed = new Promise((resolve) => {
      this._resolveClosed = resolve;
    });
  }

  /** From the latest welcome: new after a reconnect unless the token claims one. */
  get connectionId() {
    return this._welcome ? this._welcome.cid : null;
  }

  /** The token's user; null before welcome and for anonymous connections. */
  get user() {
    return this._welcome && this._welcome.user !== undefined ? this._welcome.user : null;
  }

  /** The id of the node serving the latest connection. */
  get node() {
    return this._welcome ? this._welcome.node : null;
  }

  // -- lifecycle -------------------------------------------------------------------

  /** Connect; resolves once welcomed, retrying reconnectable failures with backoff. */
  start() {
    if (this._started || this._closing) throw new Error("a client starts once");
    this._started = true;
    this._first = new Promise((resolve, reject) => {
      this._firstSettle = { resolve, reject };
    });
    this._setState(ClientState.CONNECTING);
    this._run().catch((error) => {
      console.error("wsgate client failed", error);
      this._finish(new ConnectionClosed(1011, `client failed: ${error}`));
    });
    return this._first;
  }

  /** Close with 1000; waiters fail; no more reconnects. Idempotent. */
  close() {
    this._closing = true;
    const conn = this._conn;
    if (conn && !conn.ended) {
      this._lost(conn, NORMAL, "closed by the client");
      try {
        conn.ws.close(NORMAL, "closed by the client");
      } catch {
        // already closing
      }
    }
    if (this._sleep) this._sleep.resolve();
    this._finish(null);
    return this.closed;
  }

  // -- verbs -----------------------------------------------------------------------

  /**
   * Subscribe to a topic or pattern; onMessage(topic, data) for every publication.
   * Resolves with {pattern, unsubscribe()} once the server confirmed it; rejects with
   * RemoteError (e.g. permission_denied), RequestTimeout, ConnectionLost, ConnectionClosed.
   */
  async subscribe(pattern, onMessage) {
    this._checkOpen();
    const record = { onMessage, active: false };
    let holders = this._subs.get(pattern);
    if (!holders) this._subs.set(pattern, (holders = new Set()));
    holders.add(record); // route what follows the ok
    try {
      await this._ask(`subscribe to ${pattern}`, (id) => ({ op: "sub", id, topic: pattern }));
    } catch (error) {
      this._forget(pattern, record);
      throw error;
    }
    record.active = true;
    return {
      pattern,
      unsubscribe: () => this._unsubscribe(pattern, record),
    };
  }

  /** Publish (Uint8Array/ArrayBuffer travel as `bin`) and wait for the server's ok. */
  async publish(topic, data = null, { timeout } = {}) {
    await this._ask(
      `publish to ${topic}`,
      (id) => withPayload({ op: "pub", id, topic }, data),
      timeout,
    );
  }

  /** Call a backend method; resolves with its result (a Uint8Array for `bin`). */
  async call(method, data = null, { timeout } = {}) {
    const limit = timeout || this._timeout;
    const seconds = limit / 1000;
    const ok = await this._ask(
      `call ${method}`,
      (id) => {
        const message = withPayload({ op: "call", id, method }, data);
        if (seconds <= 300) message.timeout = seconds; // the server refuses more (4.2)
        return message;
      },
      limit,
    );
    return payloadOf(ok);
  }

  /**
   * Answer the server's `req` with `await handler(data)`. A RemoteError thrown by the
   * handler is replied with its code, message and data; anything else with
   * `client_error`. Without a handler, requests get the error `unsupported`.
   */
  onRequest(handler) {
    this._requestHandler = handler;
    return handler;
  }

  /** Call callback(data) for every `push`. */
  onPush(callback) {
    this._pushCallbacks.push(callback);
    return callback;
  }

  /** Application-level ping; resolves when the pong arrives. */
  ping({ timeout } = {}) {
    const conn = this._conn;
    if (!conn || this.state !== ClientState.CONNECTED) {
      return Promise.reject(new ConnectionLost(ABNORMAL, "not connected"));
    }
    return conn.request((id) => ({ op: "ping", id }), timeout || this._timeout, "ping");
  }

  // -- requests --------------------------------------------------------------------

  _checkOpen() {
    if (this.error) throw this.error;
    if (this._closing) throw new ConnectionClosed(NORMAL, "the client is closed");
  }

  /** The current connection once CONNECTED (waiting through reconnects). */
  _connected() {
    this._checkOpen();
    if (!this._started) throw new Error("the client is not started: use connect()");
    const conn = this._conn;
    if (this.state === ClientState.CONNECTED && conn && !conn.ended) return Promise.resolve(conn);
    return new Promise((resolve, reject) => this._readyWaiters.add({ resolve, reject }));
  }

  async _ask(what, build, timeout) {
    const limit = timeout || this._timeout;
    const started = Date.now();
    let timer = null;
    const deadline = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new RequestTimeout(what, limit)), limit);
    });
    try {
      const conn = await Promise.race([this._connected(), deadline]);
      const left = Math.max(1, limit - (Date.now() - started));
      return await conn.request(build, left, what);
    } finally {
      clearTimeout(timer);
    }
  }

  _forget(pattern, record) {
    const holders = this._subs.get(pattern);
    if (!holders || !holders.delete(record)) return false;
    if (holders.size) return false;
    this._subs.delete(pattern);
    return true;
  }

  async _unsubscribe(pattern, record) {
    if (!this._forget(pattern, record) || this.state !== ClientState.CONNECTED) return;
    try {
      await this._ask(`unsubscribe ${pattern}`, (id) => ({ op: "unsub", id, topic: pattern }));
    } catch (error) {
      if (error instanceof RemoteError && error.code !== "not_subscribed") throw error;
    }
  }

  // -- the connection --------------------------------------------------------------

  async _run() {
    let failures = 0;
    for (;;) {
      let openedAt = null;
      let outcome;
      try {
        let token = this._token;
        if (this._tokenProvider) {
          try {
            token = await this._tokenProvider();
          } catch (error) {
            // e.g. fetch() failing offline: this attempt fails, the next one asks again
            console.warn("wsgate: the token provider failed", error);
            throw new ConnectionLost(ABNORMAL, "no token");
          }
        }
        if (this._closing) return;
        const conn = await this._open(token);
        openedAt = Date.now();
        outcome = await this._serve(conn);
      } catch (error) {
        outcome = this._verdict(error);
      }
      if (this._closing) return;
      if (!outcome.retry) {
        this._finish(new ConnectionClosed(outcome.code, outcome.reason));
        return;
      }
      if (openedAt !== null && Date.now() - openedAt >= STABLE_AFTER) failures = 0;
      const delay = backoffDelay(failures, ...this._backoff);
      failures += 1;
      this._setState(ClientState.RECONNECTING, {
        code: outcome.code,
        reason: outcome.reason,
        delay,
      });
      await new Promise((resolve) => {
        this._sleep = { timer: setTimeout(resolve, delay), resolve };
      });
      clearTimeout(this._sleep.timer);
      this._sleep = null;
      if (this._closing) return;
    }
  }

  /** {code, reason, retry} for a failed attempt or an ended connection. */
  _verdict(error) {
    let code;
    let reason;
    if (error instanceof ConnectionLost || error instanceof ConnectionClosed) {
      ({ code, reason } = error);
    } else {
      // new URL() / new WebSocket() refusing the URL (TypeError, SyntaxError): do not retry
      [code, reason] = [1002, String((error && error.message) || error)];
    }
    let retry = closeClass(code) === "reconnect";
    if (code === TOKEN_EXPIRED) retry = this._tokenProvider !== null; // same token fails again
    return { code, reason, retry: retry && this._reconnect && !this._closing };
  }

  /** Open a WebSocket and resolve with its Connection once welcomed. */
  _open(token) {
    const url = absoluteUrl(this.url);
    if (token) url.searchParams.set("token", token);
    const ws = new WebSocket(url.href, [SUBPROTOCOL]);
    const conn = new Connection(ws);
    this._conn = conn;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._lost(conn, ABNORMAL, "no welcome in time");
        ws.close();
      }, this._timeout);
      conn.onWelcome = (welcome) => {
        clearTimeout(timer);
        conn.welcome = welcome;
        resolve(conn);
      };
      conn.onEnd = (code, reason) => {
        clearTimeout(timer);
        reject(new ConnectionLost(code, reason));
      };
      ws.onmessage = (event) => this._receive(conn, event.data);
      ws.onclose = (event) => this._lost(conn, event.code || ABNORMAL, event.reason || "");
    });
  }

  /** The socket of `conn` is gone (or given up): settle whoever waits on it. */
  _lost(conn, code, reason) {
    if (conn.end(code, reason) && conn.onEnd) conn.onEnd(code, reason);
  }

  /** Resubscribe, report CONNECTED, and resolve with the outcome when the connection ends. */
  async _serve(conn) {
    this._welcome = conn.welcome;
    const ended = new Promise((resolve) => {
      conn.onEnd = (code, reason) => resolve({ code, reason });
    });
    if (conn.ended) conn.onEnd(conn.ended.code, conn.ended.reason);
    this._startKeepalive(conn);
    await this._resubscribe(conn);
    if (!conn.ended && !this._closing) {
      this._setState(ClientState.CONNECTED);
      for (const waiter of this._readyWaiters) waiter.resolve(conn);
      this._readyWaiters.clear();
      if (this._firstSettle) this._firstSettle.resolve(this);
    }
    const { code, reason } = await ended;
    if (this._conn === conn) this._conn = null;
    return this._verdict(new ConnectionLost(code, reason));
  }

  /** Send every confirmed subscription again, all at once (9.2). */
  async _resubscribe(conn) {
    const patterns = [...this._subs].filter(([, set]) => [...set].some((r) => r.active));
    const results = await Promise.allSettled(
      patterns.map(([pattern]) =>
        conn.request((id) => ({ op: "sub", id, topic: pattern }), this._timeout, "resubscribe"),
      ),
    );
    results.forEach((result, i) => {
      if (result.status === "rejected" && result.reason instanceof RemoteError) {
        console.warn(`wsgate: ${patterns[i][0]} dropped after reconnect:`, result.reason);
        this._subs.delete(patterns[i][0]); // e.g. the new token lacks the grant
      }
    });
  }

  _startKeepalive(conn) {
    if (!this._keepalive) return;
    const interval = (conn.welcome.ping_interval || 25) * 1000;
    conn.keepalive = setInterval(() => {
      const now = Date.now();
      if (conn.pingSentAt) {
        if (now - conn.pingSentAt > this._pongTimeout) {
          // Dead or silent: give up on the socket without waiting for its close.
          this._lost(conn, KEEPALIVE_TIMEOUT, "keepalive timeout");
          try {
            conn.ws.close(KEEPALIVE_TIMEOUT, "keepalive timeout");
          } catch {
            // already closing
          }
        }
      } else if (now - conn.lastRecv > interval) {
        conn.pingSentAt = now;
        try {
          conn.ws.send(JSON.stringify({ op: "ping" }));
        } catch {
          // the close event follows
        }
      }
    }, Math.min(1000, interval));
  }

  /** One frame: a message or an array of messages (3.2). */
  _receive(conn, raw) {
    if (conn.ended) return;
    conn.lastRecv = Date.now();
    conn.pingSentAt = 0;
    let value;
    try {
      value = JSON.parse(raw);
    } catch {
      console.warn("wsgate: a frame that is not JSON", raw);
      return;
    }
    for (const message of Array.isArray(value) ? value : [value]) {
      if (message && typeof message === "object") this._dispatch(conn, message);
    }
  }

  _dispatch(conn, message) {
    switch (message.op) {
      case "welcome":
        if (conn.onWelcome && !conn.welcome) conn.onWelcome(message);
        break;
      case "msg": {
        const data = payloadOf(message);
        for (const [pattern, holders] of this._subs) {
          if (!topicMatches(pattern, message.topic)) continue;
          for (const record of holders) this._callback(record.onMessage, message.topic, data);
        }
        break;
      }
      case "ok":
      case "error":
      case "pong":
        if (typeof message.id === "number") {
          conn.answer(message.op === "pong" ? { ...message, op: "ok" } : message);
        } else if (message.op === "error") {
          console.warn("wsgate error:", message.code, message.message);
        }
        break;
      case "push": {
        const data = payloadOf(message);
        for (const callback of this._pushCallbacks) this._callback(callback, data);
        break;
      }
      case "req":
        this._answer(conn, message);
        break;
      default: // ops of newer versions: ignored (10)
    }
  }

  _callback(callback, ...args) {
    try {
      const result = callback(...args);
      if (result && typeof result.catch === "function") {
        result.catch((error) => console.error("wsgate callback failed", error));
      }
    } catch (error) {
      console.error("wsgate callback failed", error);
    }
  }

  /** Run the request handler and send its reply (6.1). */
  async _answer(conn, request) {
    let reply;
    try {
      if (!this._requestHandler) throw new RemoteError("unsupported", "no request handler");
      const result = await this._requestHandler(payloadOf(request));
      reply = withPayload({ op: "reply", id: request.id }, result);
      JSON.stringify(reply); // a result that cannot be encoded fails here
    } catch (error) {
      const info =
        error instanceof RemoteError
          ? { code: error.code.slice(0, 255) || CLIENT_ERROR, message: error.remoteMessage }
          : { code: CLIENT_ERROR, message: String((error && error.message) || error) };
      info.message = (info.message || "").slice(0, 1000);
      if (error instanceof RemoteError && error.data !== undefined) info.data = error.data;
      reply = { op: "reply", id: request.id, error: info };
    }
    try {
      conn.send(reply);
    } catch {
      // the connection is gone: the server failed the request already
    }
  }

  /** End the client once: every waiter learns how. */
  _finish(error) {
    if (this._finished) return;
    this._finished = true;
    if (error && !this._closing) this.error = error;
    this._closing = true;
    const failure = this.error || new ConnectionClosed(NORMAL, "the client is closed");
    for (const waiter of this._readyWaiters) waiter.reject(failure);
    this._readyWaiters.clear();
    if (this._firstSettle) this._firstSettle.reject(failure);
    this._first?.catch(() => {}); // handled by whoever awaited start()
    this._subs.clear();
    this._setState(ClientState.CLOSED, this.error || undefined);
    this._resolveClosed(this.error);
  }

  _setState(state, detail) {
    this.state = state;
    if (!this._onState) return;
    try {
      this._onState(state, detail);
    } catch (error) {
      console.error("wsgate state callback failed", error);
    }
  }
}

/**
 * Connect to the gateway at `url`; resolves with the client once welcomed (retrying
 * reconnectable failures with backoff), rejects with ConnectionClosed when refused for
 * good (a bad token: 4100, ...). Options: see Client.
 */
export async function connect(url, options = {}) {
  const client = new Client(url, options);
  await client.start();
  return client;
}
