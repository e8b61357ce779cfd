// Herald's JavaScript client: one ES module, no dependencies. Served by Herald at
// GET /v1/client.js. Subscriptions resume from their last seq on every reconnect, on either
// transport, and drop duplicates, so each event is seen once and in order.
// See clients/js/README.md; types in herald.d.ts.

const VERSION = "0.1.0";
const BACKOFF_MS = [250, 500, 1000, 2000, 5000, 10000];

/** Glob match where `*` is the only wildcard (Herald's channel patterns). */
function matches(pattern, channel) {
  if (!pattern.includes("*")) return pattern === channel;
  if (channel[0] === "$") return false;
  const re = "^" + pattern.split("*").map((s) => s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")).join(".*") + "$";
  return new RegExp(re).test(channel);
}

function randomId() {
  const c = globalThis.crypto;
  if (c && c.randomUUID) return c.randomUUID();
  return Date.now().toString(36) + Math.random().toString(36).slice(2);
}

/** Seconds until a JWT expires, or Infinity (not a JWT, or no exp). */
function expiresIn(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(part)).exp;
    return typeof exp === "number" ? exp - Date.now() / 1000 : Infinity;
  } catch {
    return Infinity;
  }
}

class Subscription {
  constructor(client, channel, opts, onEvent) {
    this.client = client;
    this.channel = channel;
    this.opts = opts;
    this.onEvent = onEvent;
    this.lastSeq = opts.since ?? null;
    this.members = new Map();
    this.count = 0;
    this.onReset = opts.onReset || null;
    this.onJoin = opts.onJoin || null;
    this.onLeave = opts.onLeave || null;
    this.onPresence = opts.onPresence || null;
    this.closed = false;
  }

  /** The event if it is new for this subscription (seq above the cursor). */
  deliver(event) {
    if (this.lastSeq !== null && event.seq <= this.lastSeq) return;
    this.lastSeq = event.seq;
    try {
      this.onEvent(event);
    } catch (e) {
      this.client._emit("error", e);
    }
  }

  reset(oldest) {
    // The gap is told, never skipped silently; delivery goes on from `oldest`.
    this.lastSeq = oldest - 1;
    if (this.onReset) this.onReset(oldest);
    else this.client._emit("error", new Error(`events of ${this.channel} before ${oldest} were dropped by retention`));
  }

  /** A presence message: a full list (`members`) or changes (`joins`/`leaves`). */
  presence(msg) {
    if (msg.members) {
      const now = new Map(msg.members.map((m) => [m.user, m]));
      for (const [user, m] of this.members) if (!now.has(user) && this.onLeave) this.onLeave(m);
      for (const [user, m] of now) if (!this.members.has(user) && this.onJoin) this.onJoin(m);
      this.members = now;
    }
    for (const m of msg.joins || []) {
      if (!this.members.has(m.user) && this.onJoin) this.onJoin(m);
      this.members.set(m.user, m);
    }
    for (const m of msg.leaves || []) {
      if (this.members.delete(m.user) && this.onLeave) this.onLeave(m);
    }
    if (typeof msg.count === "number") this.count = msg.count;
    if (this.onPresence) this.onPresence({ count: this.count, members: [...this.members.values()] });
  }

  unsubscribe() {
    this.closed = true;
    this.client._unsubscribe(this);
  }
}

class Client {
  constructor(url, opts = {}) {
    const base = new URL(url || (globalThis.location ? globalThis.location.href : "http://127.0.0.1:8080"));
    this.base = base.origin;
    this.opts = opts;
    this.token = opts.token || null;
    this.mode = opts.transport === "sse" ? "sse" : "ws";
    this.WebSocket = opts.WebSocket || globalThis.WebSocket;
    this.EventSource = opts.EventSource || globalThis.EventSource;
    this.fetch = opts.fetch || globalThis.fetch.bind(globalThis);
    this.subs = new Set();
    this.listeners = {};
    this.pending = new Map(); // ref -> {msg, resolve, reject, http}
    this.calls = new Map(); // rpc ref -> {resolve, reject}
    this.nextRef = 1;
    this.attempt = 0;
    this.timers = new Set();
    this.closed = false;
    this.ws = null;
    this.sources = new Map(); // Subscription -> EventSource (SSE mode)
    this.open = new Set(); // EventSources that are open now
    this.head = null; // the head the last WebSocket welcome gave
    this.state = "disconnected";
    this._start();
  }

  on(event, fn) {
    (this.listeners[event] ||= []).push(fn);
    return () => (this.listeners[event] = this.listeners[event].filter((f) => f !== fn));
  }

  _emit(event, value) {
    for (const fn of this.listeners[event] || []) fn(value);
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", state);
    this._emit(state, undefined);
  }

  _later(ms, fn) {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (!this.closed) fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  async _freshToken(force) {
    if (this.opts.getToken && (force || !this.token || expiresIn(this.token) < 5)) {
      this.token = await this.opts.getToken();
    }
    return this.token;
  }

  /** Reconnects after a backoff with jitter: a random wait between half the step and the step. */
  _retry(fn) {
    const step = BACKOFF_MS[Math.min(this.attempt++, BACKOFF_MS.length - 1)];
    this._later(step / 2 + Math.random() * step / 2, fn);
  }

  async _start() {
    if (this.closed) return;
    this._setState("connecting");
    try {
      await this._freshToken(false);
    } catch (e) {
      this._emit("error", e);
      this._setState("disconnected");
      return this._retry(() => this._start());
    }
    if (this.mode === "ws" && this.WebSocket) this._openWs();
    else this._openSse();
  }

  _url(path, params) {
    const u = new URL(path, this.base);
    for (const [k, v] of params) if (v !== undefined && v !== null) u.searchParams.append(k, String(v));
    if (this.token) u.searchParams.set("token", this.token);
    return u;
  }

  // ---- WebSocket ----

  _openWs() {
    const u = this._url("/v1/ws", []);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    let opened = false;
    const ws = new this.WebSocket(u.toString());
    this.ws = ws;
    ws.onopen = () => {
      opened = true;
      this.attempt = 0;
      // Connected once the welcome (always the first message) names the head.
    };
    ws.onmessage = (m) => this._wsMessage(JSON.parse(m.data));
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.welcomed = false;
      // An RPC's answer would have come on this socket: the caller decides whether to ask again.
      for (const call of this.calls.values()) call.reject(Object.assign(new Error("connection lost before the answer"), { code: "disconnected" }));
      this.calls.clear();
      if (this.closed) return;
      this._setState("disconnected");
      if (!opened) {
        const told = this._probe(u.toString().replace(/^ws/, "http"));
        if (this.opts.transport !== "ws") return this._fallback();
        // Refused (401, 403): the token may be what is wrong, so the retry asks for a new one.
        if (this.opts.getToken) {
          const again = () => this._retry(() => this._start());
          return told.then((refusal) => refusal && this._freshToken(true)).then(again, again);
        }
      }
      const expired = e.code === 1008 && /token/.test(e.reason || "");
      if (expired || (e.code === 1008 && this.opts.getToken)) {
        return this._freshToken(true).then(() => this._start(), () => this._retry(() => this._start()));
      }
      this._retry(() => this._start());
    };
    ws.onerror = () => {};
  }

  _wsSend(msg) {
    if (this.ws && this.ws.readyState === 1 && this.welcomed) this.ws.send(JSON.stringify(msg));
  }

  /** The welcome: the stream is open. Every subscription resumes from its cursor; one that
   * has seen nothing yet from this head, so nothing published while it was away is lost. */
  _welcome(head) {
    this.welcomed = true;
    this.head = head;
    this._setState("connected");
    for (const sub of this.subs) {
      if (sub.lastSeq === null) sub.lastSeq = head;
      this._wsSubscribe(sub);
    }
    // Publishes not yet acked go again, with their ids: the server answers a repeat with
    // the original seq, so nothing is doubled.
    for (const [ref, p] of this.pending) if (!p.http) this._wsSend({ ...p.msg, ref });
    this._refreshBefore(this.token);
  }

  _wsSubscribe(sub) {
    if (!this.welcomed) return; // the welcome subscribes everything
    const msg = { op: "subscribe", channel: sub.channel };
    if (sub.lastSeq !== null) msg.since = sub.lastSeq;
    if (sub.opts.presence) {
      msg.presence = true;
      if (sub.opts.user) msg.user = sub.opts.user;
      if (sub.opts.info) msg.info = sub.opts.info;
    }
    this._wsSend(msg);
  }

  _wsMessage(m) {
    switch (m.op) {
      case "welcome":
        this._welcome(m.head);
        break;
      case "event":
        for (const sub of this.subs) if (matches(sub.channel, m.channel)) sub.deliver(strip(m));
        break;
      case "reset":
        for (const sub of this.subs) if (sub.channel === m.channel) sub.reset(m.oldest);
        break;
      case "subscribed":
        if (m.presence) for (const sub of this.subs) if (sub.channel === m.channel) sub.presence(m.presence);
        break;
      case "presence":
        for (const sub of this.subs) if (sub.channel === m.channel) sub.presence(m);
        break;
      case "rpc": {
        const call = this.calls.get(m.ref);
        if (call) {
          this.calls.delete(m.ref);
          call.resolve(m.data);
        }
        break;
      }
      case "ack":
      case "error": {
        const call = m.ref !== undefined && this.calls.get(m.ref);
        if (call) {
          this.calls.delete(m.ref);
          call.reject(Object.assign(new Error(m.message), { code: m.code }));
          break;
        }
        const p = m.ref !== undefined && this.pending.get(m.ref);
        if (p && !p.http) {
          if (m.op === "ack") this._settle(m.ref, m.seq);
          else this._settle(m.ref, null, Object.assign(new Error(m.message), { code: m.code }));
        } else if (m.op === "error") {
          this._emit("error", Object.assign(new Error(m.message), { code: m.code }));
        }
        break;
      }
    }
  }

  /** WebSocket failed to open: SSE (+ HTTP publish) now, WebSocket again later. */
  _fallback() {
    this.mode = "sse";
    this._emit("fallback", undefined);
    // Publishes waiting for a WebSocket that will not come go over HTTP now.
    for (const p of this.pending.values()) this._viaHttp(p);
    this._openSse();
    const again = this.opts.retryWebSocketMs ?? 30000;
    this._later(again, () => {
      if (this.mode !== "sse") return;
      this.mode = "ws";
      this._closeSources();
      this._start();
    });
  }

  // ---- Server-Sent Events ----

  _openSse() {
    if (!this.EventSource) {
      this._emit("error", new Error("neither WebSocket nor EventSource is available"));
      return;
    }
    this._refreshBefore(this.token);
    if (this.subs.size === 0) return this._sseIdle();
    for (const sub of this.subs) this._sseSubscribe(sub);
  }

  /** SSE mode with nothing subscribed holds no stream: "connected" once the server answers. */
  async _sseIdle() {
    try {
      const r = await this.fetch(this.base + "/healthz");
      if (r.ok && this.mode === "sse" && !this.closed) this._setState("connected");
      else throw new Error("HTTP " + r.status);
    } catch {
      if (this.mode === "sse" && !this.closed && this.subs.size === 0) this._retry(() => this._openSse());
    }
  }

  /** State from the open streams (SSE mode). */
  _sseState() {
    if (this.mode !== "sse" || this.closed) return;
    this._setState(this.open.size > 0 ? "connected" : "disconnected");
  }

  /** One EventSource per subscription: each resumes from its own cursor. */
  _sseSubscribe(sub) {
    // typed=false: every event comes to onmessage whatever its type (reset and presence keep
    // their names).
    const params = [["channel", sub.channel], ["last_event_id", sub.lastSeq], ["typed", "false"]];
    if (sub.opts.presence) {
      params.push(["presence", "true"], ["user", sub.opts.user]);
      if (sub.opts.info) params.push(["info", JSON.stringify(sub.opts.info)]);
    }
    const url = this._url("/v1/sse", params).toString();
    // withCredentials: a page on another origin sends its cookies (Herald's backend hooks
    // then ask the app who it is).
    const es = new this.EventSource(url, { withCredentials: !!this.opts.withCredentials });
    this.sources.set(sub, es);
    let opened = false;
    es.onopen = () => {
      opened = true;
      this.attempt = 0;
      this.open.add(es);
      this._sseState();
    };
    es.onmessage = (e) => sub.deliver(JSON.parse(e.data));
    es.addEventListener("reset", (e) => sub.reset(JSON.parse(e.data).oldest));
    es.addEventListener("presence", (e) => sub.presence(JSON.parse(e.data)));
    es.onerror = () => {
      this.open.delete(es);
      this._sseState();
      // EventSource reconnects by itself (with Last-Event-ID); a closed one means the server
      // refused it (an expired token, say): say why, then start over with a fresh token.
      if (es.readyState === 2 && this.sources.get(sub) === es) {
        this.sources.delete(sub);
        if (!opened) this._probe(url);
        const again = () => !sub.closed && this.mode === "sse" && this._sseSubscribe(sub);
        this._freshToken(true).then(
          () => this._retry(again),
          () => this._retry(again),
        );
      }
    };
  }

  _closeSources() {
    for (const es of this.sources.values()) es.close();
    this.sources.clear();
    this.open.clear();
  }

  /** A stream failed before opening: WebSocket and EventSource hide the status, so ask the
   * same URL with fetch. A refusal (401, 403, ...) is told as an `error` with Herald's code
   * and message, and publishes waiting for a stream are refused with it; it is also the
   * promise's value (null when it was no refusal). */
  async _probe(url) {
    const abort = new AbortController();
    let r;
    try {
      r = await this.fetch(url, { signal: abort.signal, headers: this.token ? { authorization: "Bearer " + this.token } : {} });
    } catch {
      // Down, or a refusal the browser will not let this page read (cross-origin).
      this._emit("error", Object.assign(new Error(`cannot reach ${this.base} (down, or refusing this page's origin: see server.allowed_origins)`), { code: "unreachable" }));
      return null;
    }
    const body = r.ok ? {} : await r.json().catch(() => ({}));
    abort.abort();
    // Open (the failure was passing), a WebSocket URL asked without an upgrade, or the
    // server's own trouble: not a refusal.
    if (r.ok || r.status >= 500 || body.error?.code === "websocket_required") return null;
    const e = Object.assign(new Error(body.error?.message || "HTTP " + r.status), { code: body.error?.code || "http_" + r.status, status: r.status });
    this._emit("error", e);
    for (const [ref, p] of this.pending) if (!p.http) this._settle(ref, null, e);
    return e;
  }

  /** Reconnects with a new token shortly before this one expires. */
  _refreshBefore(token) {
    if (!token || !this.opts.getToken) return;
    const left = expiresIn(token);
    if (!isFinite(left)) return;
    clearTimeout(this.refresh);
    this.timers.delete(this.refresh);
    // A little before it runs out (and never in a loop for very short tokens).
    this.refresh = this._later(Math.max(left - 5, left * 0.8, 0.5) * 1000, async () => {
      await this._freshToken(true);
      if (this.ws) this.ws.close(4000, "token refresh");
      else if (this.mode === "sse") {
        this._closeSources();
        this._openSse();
      }
    });
  }

  // ---- API ----

  subscribe(channel, opts, onEvent) {
    if (typeof opts === "function") [opts, onEvent] = [{}, opts];
    const sub = new Subscription(this, channel, opts || {}, onEvent);
    this.subs.add(sub);
    if (this.mode === "ws") this._wsSubscribe(sub);
    else if (this.state === "connected") this._sseSubscribe(sub);
    return sub;
  }

  _unsubscribe(sub) {
    this.subs.delete(sub);
    // The server holds one subscription per channel for the connection: keep it while
    // another Subscription here still wants the channel.
    const shared = [...this.subs].some((s) => s.channel === sub.channel);
    if (this.mode === "ws" && !shared) this._wsSend({ op: "unsubscribe", channel: sub.channel });
    const es = this.sources.get(sub);
    if (es) {
      es.close();
      this.open.delete(es);
    }
    this.sources.delete(sub);
    this._sseState();
  }

  /** Resolves to the event's seq once it is durable. An `id` is made when none is given, so a
   * publish repeated after a reconnect is stored once. While no connection can take it, it
   * waits and is retried with backoff (same id) until `publishTimeoutMs` (default 30 s). */
  publish(channel, data, opts = {}) {
    const msg = { op: "publish", channel, data, id: opts.id || randomId() };
    if (opts.type) msg.type = opts.type;
    return new Promise((resolve, reject) => {
      const ref = this.nextRef++;
      const p = { msg, resolve, reject, http: false };
      this.pending.set(ref, p);
      const limit = this.opts.publishTimeoutMs ?? 30000;
      p.timer = this._later(limit, () => {
        const e = new Error(`publish not confirmed within ${limit} ms; it may or may not be stored: publish again with the same id (${msg.id}) and it is stored once`);
        this._settle(ref, null, Object.assign(e, { code: "publish_timeout", id: msg.id }));
      });
      if (this.mode === "ws" && this.WebSocket) this._wsSend({ ...msg, ref });
      else this._viaHttp(p);
    });
  }

  /** Ends a pending publish once (an ack, an answer, a refusal or its deadline). */
  _settle(ref, seq, error) {
    const p = this.pending.get(ref);
    if (!p) return;
    this.pending.delete(ref);
    clearTimeout(p.timer);
    this.timers.delete(p.timer);
    if (error) p.reject(error);
    else p.resolve(seq);
  }

  /** Sends a pending publish over HTTP, retrying with backoff while nothing answers. */
  async _viaHttp(p) {
    if (p.http) return;
    p.http = true;
    const ref = [...this.pending].find(([, q]) => q === p)?.[0];
    for (let attempt = 0; this.pending.get(ref) === p; attempt++) {
      try {
        const seq = await this._httpPublish(p.msg);
        return this._settle(ref, seq);
      } catch (e) {
        if (!e.retry) return this._settle(ref, null, e);
      }
      const step = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
      await new Promise((ok) => this._later(step / 2 + (Math.random() * step) / 2, ok));
    }
  }

  /** One HTTP publish: the seq, or an error with `retry` set when trying again may help. */
  async _httpPublish(msg) {
    const { op, ...body } = msg;
    const send = () => {
      const headers = { "content-type": "application/json" };
      if (this.token) headers.authorization = "Bearer " + this.token;
      const credentials = this.opts.withCredentials ? "include" : "same-origin";
      return this.fetch(this.base + "/v1/events", { method: "POST", headers, credentials, body: JSON.stringify(body) });
    };
    let r;
    try {
      r = await send();
      if (r.status === 401 && this.opts.getToken) {
        await this._freshToken(true);
        r = await send();
      }
    } catch (e) {
      throw Object.assign(e instanceof Error ? e : new Error(String(e)), { retry: true });
    }
    const reply = await r.json().catch(() => ({}));
    if (r.ok) return reply.seq;
    const retry = r.status >= 500 || r.status === 429 || r.status === 408;
    throw Object.assign(new Error(reply.error?.message || r.statusText), { code: reply.error?.code, status: r.status, retry });
  }

  /** Asks the app behind Herald (its `proxy.rpc_url`) over the WebSocket; resolves to its
   * answer. Needs the WebSocket open (not the SSE fallback). */
  rpc(method, data) {
    return new Promise((resolve, reject) => {
      if (!(this.ws && this.welcomed)) {
        return reject(Object.assign(new Error("rpc needs an open WebSocket"), { code: "not_connected" }));
      }
      const ref = "rpc" + this.nextRef++;
      this.calls.set(ref, { resolve, reject });
      this._wsSend({ op: "rpc", method, data, ref });
    });
  }

  /** Pages of history after `after`, oldest first. */
  async *history(channel, opts = {}) {
    let after = opts.after ?? 0;
    for (;;) {
      const u = this._url("/v1/events", [["channel", channel], ["after", after], ["limit", opts.limit ?? 100]]);
      const r = await this.fetch(u.toString(), { headers: this.token ? { authorization: "Bearer " + this.token } : {} });
      const page = await r.json();
      if (!r.ok) throw Object.assign(new Error(page.error?.message), { code: page.error?.code });
      if (page.events.length === 0 && page.next === after) return;
      yield page.events;
      if (page.next === after) return;
      after = page.next;
    }
  }

  /** Closes everything: no socket, stream or timer is left behind. */
  close() {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000);
    }
    this._closeSources();
    for (const call of this.calls.values()) call.reject(Object.assign(new Error("client closed"), { code: "closed" }));
    this.calls.clear();
    for (const ref of [...this.pending.keys()]) this._settle(ref, null, Object.assign(new Error("client closed"), { code: "closed" }));
    this._setState("disconnected");
  }
}

/** `{"op":"event", ...envelope}` -> the envelope. */
function strip(m) {
  const { op, ...event } = m;
  return event;
}

export function connect(url, opts) {
  return new Client(url, opts);
}

export { VERSION, matches };
