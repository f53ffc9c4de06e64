// The Workers runtime API (the subset Cloudflare Workers and workerd give a
// module worker), written over a few native functions the node provides on
// `__native`. Evaluated once in every fresh context, before the function's
// own module; it leaves the API on globalThis and removes `__native`.
//
// What is here: Headers, Request, Response, URL, URLSearchParams,
// TextEncoder, TextDecoder, ReadableStream / WritableStream / TransformStream
// (enough for streamed bodies), crypto.getRandomValues, crypto.randomUUID,
// crypto.subtle.digest, fetch, setTimeout / clearTimeout / setInterval /
// clearInterval, queueMicrotask, structuredClone (JSON-shaped values),
// atob / btoa, performance.now, AbortController, console.
// What is not: Blob, FormData, WebSocket, Cache, crypto.subtle beyond digest.
(function (N) {
  "use strict";
  const G = globalThis;
  const def = (name, value) =>
    Object.defineProperty(G, name, { value, writable: true, configurable: true, enumerable: false });

  // ---- text -------------------------------------------------------------
  class TextEncoder {
    get encoding() { return "utf-8"; }
    encode(s = "") { return new Uint8Array(N.encode(String(s))); }
    encodeInto(s, dest) {
      const b = this.encode(s);
      const n = Math.min(b.length, dest.length);
      dest.set(b.subarray(0, n));
      return { read: n === b.length ? String(s).length : n, written: n };
    }
  }
  class TextDecoder {
    constructor(label = "utf-8", opts = {}) {
      const l = String(label).toLowerCase();
      if (l !== "utf-8" && l !== "utf8" && l !== "unicode-1-1-utf-8")
        throw new RangeError(`TextDecoder: unsupported encoding "${label}"`);
      this.fatal = !!opts.fatal;
      this.ignoreBOM = !!opts.ignoreBOM;
    }
    get encoding() { return "utf-8"; }
    decode(input) {
      if (input === undefined) return "";
      const u = bytesOf(input);
      let s = N.decode(u, this.fatal);
      if (!this.ignoreBOM && s.charCodeAt(0) === 0xfeff) s = s.slice(1);
      return s;
    }
  }
  // Any BufferSource as a Uint8Array over the same memory.
  function bytesOf(x) {
    if (x instanceof Uint8Array) return x;
    if (x instanceof ArrayBuffer) return new Uint8Array(x);
    if (ArrayBuffer.isView(x)) return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
    throw new TypeError("expected an ArrayBuffer or a typed array");
  }
  const enc = new TextEncoder();
  const dec = new TextDecoder();

  // ---- URL ----------------------------------------------------------------
  const urlParts = Symbol("parts");
  const FIELDS = ["href", "protocol", "username", "password", "host", "hostname", "port", "pathname", "search", "hash", "origin"];
  class URLSearchParams {
    constructor(init = "", url = null) {
      this._l = [];
      this._url = url;
      if (init instanceof URLSearchParams) this._l = init._l.map((p) => [p[0], p[1]]);
      else if (typeof init === "object" && init !== null) {
        if (typeof init[Symbol.iterator] === "function") {
          for (const p of init) {
            const a = Array.from(p);
            if (a.length !== 2) throw new TypeError("URLSearchParams: each pair needs two items");
            this._l.push([String(a[0]), String(a[1])]);
          }
        } else for (const k of Object.keys(init)) this._l.push([k, String(init[k])]);
      } else this._parse(String(init));
    }
    _parse(s) {
      this._l = [];
      if (s.startsWith("?")) s = s.slice(1);
      for (const part of s.split("&")) {
        if (part === "") continue;
        const i = part.indexOf("=");
        const k = i < 0 ? part : part.slice(0, i);
        const v = i < 0 ? "" : part.slice(i + 1);
        this._l.push([formDecode(k), formDecode(v)]);
      }
    }
    _update() {
      if (this._url) {
        const s = this.toString();
        this._url._set("search", s === "" ? "" : "?" + s, true);
      }
    }
    get size() { return this._l.length; }
    append(k, v) { this._l.push([String(k), String(v)]); this._update(); }
    delete(k, v) {
      k = String(k);
      this._l = this._l.filter((p) => !(p[0] === k && (v === undefined || p[1] === String(v))));
      this._update();
    }
    get(k) { k = String(k); const p = this._l.find((p) => p[0] === k); return p ? p[1] : null; }
    getAll(k) { k = String(k); return this._l.filter((p) => p[0] === k).map((p) => p[1]); }
    has(k, v) { k = String(k); return this._l.some((p) => p[0] === k && (v === undefined || p[1] === String(v))); }
    set(k, v) {
      k = String(k); v = String(v);
      const i = this._l.findIndex((p) => p[0] === k);
      if (i < 0) this._l.push([k, v]);
      else { this._l[i][1] = v; this._l = this._l.filter((p, j) => j <= i || p[0] !== k); }
      this._update();
    }
    sort() { this._l.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)); this._update(); }
    forEach(f, self) { for (const [k, v] of this._l) f.call(self, v, k, this); }
    *entries() { for (const p of this._l) yield [p[0], p[1]]; }
    *keys() { for (const p of this._l) yield p[0]; }
    *values() { for (const p of this._l) yield p[1]; }
    [Symbol.iterator]() { return this.entries(); }
    toString() { return this._l.map((p) => formEncode(p[0]) + "=" + formEncode(p[1])).join("&"); }
    get [Symbol.toStringTag]() { return "URLSearchParams"; }
  }
  function formDecode(s) {
    s = s.replace(/\+/g, " ");
    try { return decodeURIComponent(s); } catch (_) { return N.percentDecode(s); }
  }
  function formEncode(s) {
    return encodeURIComponent(s).replace(/%20/g, "+").replace(/[!'()~]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());
  }
  class URL {
    constructor(input, base) {
      const p = (base === undefined ? N.urlParse(String(input)) : N.urlParse(String(input), String(base)));
      if (p == null) throw new TypeError(`Invalid URL: ${input}`);
      this[urlParts] = p;
      this._sp = null;
    }
    static canParse(input, base) { return (base === undefined ? N.urlParse(String(input)) : N.urlParse(String(input), String(base))) != null; }
    static parse(input, base) { try { return new URL(input, base); } catch (_) { return null; } }
    _set(field, value, fromParams) {
      const p = N.urlSet(this[urlParts][0], field, String(value));
      if (p != null) this[urlParts] = p;
      if (!fromParams && this._sp) this._sp._parse(this.search);
    }
    get searchParams() {
      if (!this._sp) this._sp = new URLSearchParams(this.search, this);
      return this._sp;
    }
    toString() { return this.href; }
    toJSON() { return this.href; }
    get [Symbol.toStringTag]() { return "URL"; }
  }
  FIELDS.forEach((f, i) => {
    const d = { get() { return this[urlParts][i]; }, enumerable: true, configurable: true };
    if (f !== "origin") d.set = function (v) { this._set(f, v, false); };
    Object.defineProperty(URL.prototype, f, d);
  });

  // ---- Headers ----------------------------------------------------------
  const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
  function hname(n) {
    n = String(n);
    if (!TOKEN.test(n)) throw new TypeError(`Invalid header name: ${n}`);
    return n.toLowerCase();
  }
  function hvalue(v) {
    v = String(v).replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, "");
    if (/[\0\r\n]/.test(v)) throw new TypeError("Invalid header value");
    return v;
  }
  class Headers {
    constructor(init) {
      this._m = new Map();
      this._guard = false;
      if (init === undefined || init === null) return;
      if (init instanceof Headers) { for (const [k, v] of init._m) this._m.set(k, v.slice()); return; }
      if (typeof init[Symbol.iterator] === "function") {
        for (const p of init) {
          const a = Array.from(p);
          if (a.length !== 2) throw new TypeError("Headers: each pair needs two items");
          this.append(a[0], a[1]);
        }
        return;
      }
      for (const k of Object.keys(init)) this.append(k, init[k]);
    }
    _check() { if (this._guard) throw new TypeError("Can't modify immutable headers."); }
    append(n, v) {
      this._check();
      n = hname(n); v = hvalue(v);
      const l = this._m.get(n);
      if (l) l.push(v); else this._m.set(n, [v]);
    }
    set(n, v) { this._check(); this._m.set(hname(n), [hvalue(v)]); }
    delete(n) { this._check(); this._m.delete(hname(n)); }
    get(n) { const l = this._m.get(hname(n)); return l ? l.join(", ") : null; }
    getAll(n) { n = hname(n); return this._m.get(n) ? this._m.get(n).slice() : []; }
    getSetCookie() { const l = this._m.get("set-cookie"); return l ? l.slice() : []; }
    has(n) { return this._m.has(hname(n)); }
    *entries() {
      const names = Array.from(this._m.keys()).sort();
      for (const n of names) {
        const l = this._m.get(n);
        if (l === undefined) continue;
        if (n === "set-cookie") for (const v of l) yield [n, v];
        else yield [n, l.join(", ")];
      }
    }
    *keys() { for (const [k] of this.entries()) yield k; }
    *values() { for (const [, v] of this.entries()) yield v; }
    forEach(f, self) { for (const [k, v] of this.entries()) f.call(self, v, k, this); }
    [Symbol.iterator]() { return this.entries(); }
    get [Symbol.toStringTag]() { return "Headers"; }
  }
  // Flat [name, value, name, value, ...] for the node, every value separate.
  function flatHeaders(h) {
    const out = [];
    for (const [n, l] of h._m) for (const v of l) out.push(n, v);
    return out;
  }
  function headersFromFlat(flat) {
    const h = new Headers();
    for (let i = 0; i < flat.length; i += 2) {
      const n = flat[i].toLowerCase();
      const l = h._m.get(n);
      if (l) l.push(flat[i + 1]); else h._m.set(n, [flat[i + 1]]);
    }
    return h;
  }

  // ---- streams ----------------------------------------------------------
  class ReadableStreamDefaultController {
    constructor(s) { this._s = s; }
    get desiredSize() { return this._s._q.length ? 0 : 1; }
    enqueue(chunk) {
      const s = this._s;
      if (s._closed) throw new TypeError("enqueue on a closed stream");
      if (s._waiting.length) s._waiting.shift().resolve({ value: chunk, done: false });
      else s._q.push(chunk);
    }
    close() {
      const s = this._s;
      s._closed = true;
      if (s._q.length === 0) while (s._waiting.length) s._waiting.shift().resolve({ value: undefined, done: true });
    }
    error(e) {
      const s = this._s;
      s._error = e === undefined ? new TypeError("stream errored") : e;
      s._closed = true;
      while (s._waiting.length) s._waiting.shift().reject(s._error);
    }
  }
  class ReadableStreamDefaultReader {
    constructor(s) {
      if (s._locked) throw new TypeError("This ReadableStream is currently locked to a reader.");
      s._locked = true;
      this._s = s;
    }
    read() {
      const s = this._s;
      if (s._q.length) return Promise.resolve({ value: s._q.shift(), done: false });
      if (s._error !== undefined) return Promise.reject(s._error);
      if (s._closed) return Promise.resolve({ value: undefined, done: true });
      const p = new Promise((resolve, reject) => s._waiting.push({ resolve, reject }));
      s._pull();
      return p;
    }
    releaseLock() { this._s._locked = false; }
    cancel(reason) { return this._s.cancel(reason); }
    get closed() { return Promise.resolve(); }
  }
  class ReadableStream {
    constructor(source = {}, _strategy) {
      this._q = [];
      this._waiting = [];
      this._closed = false;
      this._locked = false;
      this._error = undefined;
      this._pulling = false;
      this._src = source;
      this._c = new ReadableStreamDefaultController(this);
      if (source.start) {
        try {
          const r = source.start(this._c);
          if (r && typeof r.then === "function") r.then(undefined, (e) => this._c.error(e));
        } catch (e) { this._c.error(e); }
      }
    }
    _pull() {
      if (this._pulling || this._closed || !this._src.pull) return;
      this._pulling = true;
      let r;
      try { r = this._src.pull(this._c); } catch (e) { this._pulling = false; this._c.error(e); return; }
      Promise.resolve(r).then(
        () => { this._pulling = false; if (this._waiting.length) this._pull(); },
        (e) => { this._pulling = false; this._c.error(e); });
    }
    get locked() { return this._locked; }
    getReader() { return new ReadableStreamDefaultReader(this); }
    cancel(reason) {
      this._closed = true;
      this._q = [];
      if (this._src.cancel) try { this._src.cancel(reason); } catch (_) { /* ignored */ }
      while (this._waiting.length) this._waiting.shift().resolve({ value: undefined, done: true });
      return Promise.resolve();
    }
    pipeThrough(t) { this.pipeTo(t.writable); return t.readable; }
    async pipeTo(w) {
      const r = this.getReader();
      const wr = w.getWriter();
      for (;;) {
        const { value, done } = await r.read();
        if (done) break;
        await wr.write(value);
      }
      await wr.close();
    }
    tee() {
      const chunks = [];
      const r = this.getReader();
      const pump = async () => { for (;;) { const x = await r.read(); if (x.done) return; chunks.push(x.value); } };
      const all = pump();
      const branch = () => {
        let i = 0;
        return new ReadableStream({
          async pull(c) { await all; if (i < chunks.length) c.enqueue(chunks[i++]); else c.close(); },
        });
      };
      return [branch(), branch()];
    }
    async *[Symbol.asyncIterator]() {
      const r = this.getReader();
      for (;;) { const { value, done } = await r.read(); if (done) return; yield value; }
    }
    static from(iterable) {
      const it = iterable[Symbol.asyncIterator] ? iterable[Symbol.asyncIterator]() : iterable[Symbol.iterator]();
      return new ReadableStream({
        async pull(c) { const { value, done } = await it.next(); if (done) c.close(); else c.enqueue(value); },
      });
    }
  }
  class WritableStreamDefaultWriter {
    constructor(w) { this._w = w; }
    write(chunk) { return Promise.resolve(this._w._sink.write ? this._w._sink.write(chunk, this._w) : undefined); }
    close() { return Promise.resolve(this._w._sink.close ? this._w._sink.close(this._w) : undefined); }
    abort(reason) { return Promise.resolve(this._w._sink.abort ? this._w._sink.abort(reason) : undefined); }
    releaseLock() {}
    get ready() { return Promise.resolve(); }
    get desiredSize() { return 1; }
  }
  class WritableStream {
    constructor(sink = {}) { this._sink = sink; if (sink.start) sink.start(this); }
    getWriter() { return new WritableStreamDefaultWriter(this); }
    get locked() { return false; }
  }
  class TransformStream {
    constructor(t = {}) {
      let ctl;
      this.readable = new ReadableStream({ start(c) { ctl = c; } });
      const tc = { enqueue: (x) => ctl.enqueue(x), error: (e) => ctl.error(e), terminate: () => ctl.close(), desiredSize: 1 };
      if (t.start) t.start(tc);
      this.writable = new WritableStream({
        async write(chunk) { if (t.transform) await t.transform(chunk, tc); else ctl.enqueue(chunk); },
        async close() { if (t.flush) await t.flush(tc); ctl.close(); },
        abort(e) { ctl.error(e); },
      });
    }
  }
  class TextEncoderStream extends TransformStream {
    constructor() { super({ transform(c, t) { t.enqueue(enc.encode(c)); } }); }
  }
  class TextDecoderStream extends TransformStream {
    constructor() { super({ transform(c, t) { t.enqueue(dec.decode(c)); } }); }
  }

  // ---- bodies -------------------------------------------------------------
  // A body is held as null, bytes (Uint8Array) or a ReadableStream.
  function extract(body, headers) {
    if (body === undefined || body === null) return null;
    if (typeof body === "string") {
      if (!headers.has("content-type")) headers.set("content-type", "text/plain;charset=UTF-8");
      return enc.encode(body);
    }
    if (body instanceof ReadableStream) return body;
    if (body instanceof URLSearchParams) {
      if (!headers.has("content-type")) headers.set("content-type", "application/x-www-form-urlencoded;charset=UTF-8");
      return enc.encode(body.toString());
    }
    if (body instanceof ArrayBuffer || ArrayBuffer.isView(body)) return new Uint8Array(bytesOf(body).slice());
    const s = String(body);
    if (!headers.has("content-type")) headers.set("content-type", "text/plain;charset=UTF-8");
    return enc.encode(s);
  }
  async function drain(stream) {
    const r = stream.getReader();
    const parts = [];
    let n = 0;
    for (;;) {
      const { value, done } = await r.read();
      if (done) break;
      const u = typeof value === "string" ? enc.encode(value) : bytesOf(value);
      parts.push(u);
      n += u.length;
    }
    const out = new Uint8Array(n);
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  }
  class Body {
    _initBody(b) { this._body = b; this._used = false; }
    get bodyUsed() { return this._used; }
    get body() {
      const b = this._body;
      if (b === null) return null;
      if (b instanceof ReadableStream) return b;
      this._body = new ReadableStream({ start(c) { if (b.length) c.enqueue(b); c.close(); } });
      return this._body;
    }
    async _bytes() {
      if (this._used) throw new TypeError("Body has already been used. It can only be used once.");
      this._used = true;
      const b = this._body;
      if (b === null) return new Uint8Array(0);
      if (b instanceof ReadableStream) return drain(b);
      return b;
    }
    async arrayBuffer() { const b = await this._bytes(); return b.byteOffset === 0 && b.byteLength === b.buffer.byteLength ? b.buffer : b.slice().buffer; }
    async bytes() { return new Uint8Array(await this.arrayBuffer()); }
    async text() { return dec.decode(await this._bytes()); }
    async json() { return JSON.parse(await this.text()); }
    async formData() { throw new TypeError("formData() is not supported on this runtime"); }
    async blob() { throw new TypeError("blob() is not supported on this runtime"); }
    _cloneBody() {
      if (this._used) throw new TypeError("Body has already been used.");
      const b = this._body;
      if (b instanceof ReadableStream) { const [x, y] = b.tee(); this._body = x; return y; }
      return b;
    }
  }

  // ---- Request / Response -----------------------------------------------
  const METHODS = ["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH"];
  class Request extends Body {
    constructor(input, init = {}) {
      super();
      let src = null;
      if (input instanceof Request) src = input;
      const url = src ? src.url : new URL(String(input)).href;
      let method = init.method !== undefined ? String(init.method) : src ? src.method : "GET";
      if (METHODS.includes(method.toUpperCase())) method = method.toUpperCase();
      if (!TOKEN.test(method)) throw new TypeError(`Invalid HTTP method: ${method}`);
      const headers = new Headers(init.headers !== undefined ? init.headers : src ? src.headers : undefined);
      let body = init.body !== undefined ? extract(init.body, headers) : src ? src._cloneBody() : null;
      if (body !== null && (method === "GET" || method === "HEAD"))
        throw new TypeError("Request with a GET or HEAD method cannot have a body.");
      this.url = url;
      this.method = method;
      this.headers = headers;
      this.redirect = init.redirect || (src ? src.redirect : "follow");
      this.signal = init.signal || (src ? src.signal : new AbortSignal());
      this.cf = init.cf || (src ? src.cf : undefined);
      this._initBody(body);
    }
    clone() { return new Request(this, { body: this._cloneBody() }); }
    get [Symbol.toStringTag]() { return "Request"; }
  }
  class Response extends Body {
    constructor(body = null, init = {}) {
      super();
      const status = init.status === undefined ? 200 : Number(init.status);
      if (!Number.isInteger(status) || status < 200 || status > 599)
        throw new RangeError(`Responses may only be constructed with status codes in the range 200 to 599, inclusive.`);
      const headers = new Headers(init.headers);
      const b = extract(body, headers);
      if (b !== null && (status === 101 || status === 204 || status === 205 || status === 304))
        throw new TypeError(`Response with null body status (${status}) cannot have a body.`);
      this.status = status;
      this.statusText = init.statusText === undefined ? "" : String(init.statusText);
      this.headers = headers;
      this.webSocket = null;
      this.url = "";
      this.redirected = false;
      this.type = "default";
      this._initBody(b);
    }
    get ok() { return this.status >= 200 && this.status < 300; }
    clone() { const r = new Response(null, this); r._initBody(this._cloneBody()); return r; }
    static json(data, init = {}) {
      const headers = new Headers(init.headers);
      if (!headers.has("content-type")) headers.set("content-type", "application/json");
      return new Response(JSON.stringify(data), { ...init, headers });
    }
    static redirect(url, status = 302) {
      if (![301, 302, 303, 307, 308].includes(status)) throw new RangeError(`Invalid redirect status: ${status}`);
      return new Response(null, { status, headers: { location: new URL(url).href } });
    }
    static error() { const r = new Response(null, { status: 200 }); r.type = "error"; r.status = 0; return r; }
    get [Symbol.toStringTag]() { return "Response"; }
  }

  // ---- crypto -----------------------------------------------------------
  const DIGESTS = { "SHA-1": 1, "SHA-256": 1, "SHA-384": 1, "SHA-512": 1, "MD5": 1 };
  const crypto = {
    getRandomValues(a) {
      if (!ArrayBuffer.isView(a) || a instanceof Float32Array || a instanceof Float64Array || a instanceof DataView)
        throw new TypeError("getRandomValues: an integer typed array");
      if (a.byteLength > 65536) throw new RangeError("getRandomValues: at most 65536 bytes");
      bytesOf(a).set(new Uint8Array(N.randomBytes(a.byteLength)));
      return a;
    },
    randomUUID() {
      const b = new Uint8Array(N.randomBytes(16));
      b[6] = (b[6] & 0x0f) | 0x40;
      b[8] = (b[8] & 0x3f) | 0x80;
      const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
      return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
    },
    subtle: {
      async digest(alg, data) {
        const name = String(typeof alg === "object" ? alg.name : alg).toUpperCase();
        if (!DIGESTS[name]) throw new DOMException(`Unrecognized algorithm name`, "NotSupportedError");
        const u = bytesOf(data);
        return N.digest(name, u);
      },
    },
  };
  class DOMException extends Error {
    constructor(message = "", name = "Error") { super(message); this.name = name; }
  }

  // ---- timers -------------------------------------------------------------
  // Run by the node between turns of the job queue; their time is wall
  // time, not CPU time.
  const timers = new Map();
  let timerSeq = 0;
  function addTimer(f, ms, args, repeat) {
    if (typeof f !== "function") throw new TypeError("setTimeout: a function");
    const id = ++timerSeq;
    const delay = Math.max(0, Number(ms) || 0);
    timers.set(id, { f, args, at: N.now() + delay, every: repeat ? Math.max(1, delay) : 0 });
    return id;
  }
  function runTimers() {
    let next = -1;
    const now = N.now();
    for (const [id, t] of Array.from(timers)) {
      if (t.at <= now) {
        if (t.every) t.at = now + t.every; else timers.delete(id);
        t.f(...t.args);
      }
    }
    for (const t of timers.values()) {
      const wait = Math.max(0, t.at - N.now());
      if (next < 0 || wait < next) next = wait;
    }
    return next;
  }

  // ---- AbortController ----------------------------------------------------
  class AbortSignal {
    constructor() { this.aborted = false; this.reason = undefined; this._l = []; this.onabort = null; }
    addEventListener(t, f) { if (t === "abort") this._l.push(f); }
    removeEventListener(t, f) { this._l = this._l.filter((x) => x !== f); }
    throwIfAborted() { if (this.aborted) throw this.reason; }
    _abort(reason) {
      if (this.aborted) return;
      this.aborted = true;
      this.reason = reason === undefined ? new DOMException("The operation was aborted.", "AbortError") : reason;
      for (const f of this._l) f({ type: "abort" });
      if (this.onabort) this.onabort({ type: "abort" });
    }
    static abort(reason) { const s = new AbortSignal(); s._abort(reason); return s; }
    static timeout(ms) { const s = new AbortSignal(); addTimer(() => s._abort(new DOMException("timed out", "TimeoutError")), ms, [], false); return s; }
  }
  class AbortController {
    constructor() { this.signal = new AbortSignal(); }
    abort(reason) { this.signal._abort(reason); }
  }

  // ---- fetch ----------------------------------------------------------------
  async function fetch(input, init) {
    const req = new Request(input, init);
    const body = req._body === null ? null : await req._bytes();
    const r = N.fetch(req.method, req.url, flatHeaders(req.headers), body, req.redirect !== "manual");
    // r: [status, statusText, flat headers, body ArrayBuffer, final URL]
    const res = new Response(null, { status: r[0] < 200 ? 200 : r[0], statusText: r[1] });
    res.status = r[0];
    res.headers = headersFromFlat(r[2]);
    res.url = r[4];
    res.redirected = r[4] !== req.url;
    res._initBody(r[0] === 204 || r[0] === 304 || req.method === "HEAD" ? null : new Uint8Array(r[3]));
    return res;
  }

  // ---- console ------------------------------------------------------------
  function show(x, depth) {
    if (typeof x === "string") return x;
    if (x instanceof Error) return `${x.name}: ${x.message}${x.stack ? "\n" + x.stack : ""}`;
    if (typeof x === "function") return `[Function: ${x.name || "anonymous"}]`;
    if (typeof x === "object" && x !== null && depth < 2) {
      try { return JSON.stringify(x); } catch (_) { return Object.prototype.toString.call(x); }
    }
    return String(x);
  }
  const log = (level) => (...args) => N.log(level, args.map((a) => show(a, 0)).join(" "));
  const console = {
    log: log("info"), info: log("info"), debug: log("debug"), trace: log("debug"),
    warn: log("warn"), error: log("error"),
  };

  // ---- base64 -------------------------------------------------------------
  function btoa(s) {
    s = String(s);
    if (/[^\0-\xff]/.test(s)) throw new DOMException("Invalid character", "InvalidCharacterError");
    return N.btoa(s);
  }
  function atob(s) {
    const r = N.atob(String(s).replace(/[\t\n\f\r ]/g, ""));
    if (r == null) throw new DOMException("The string to be decoded is not correctly encoded.", "InvalidCharacterError");
    return r;
  }

  // ---- KV -------------------------------------------------------------------
  class KVNamespace {
    constructor(ns) { this._ns = ns; }
    async get(key, opts) {
      const type = typeof opts === "string" ? opts : (opts && opts.type) || "text";
      const v = N.kvGet(this._ns, String(key));
      if (v === null) return null;
      const b = new Uint8Array(v[0]);
      if (type === "arrayBuffer") return b.buffer;
      if (type === "stream") return new ReadableStream({ start(c) { c.enqueue(b); c.close(); } });
      const text = dec.decode(b);
      return type === "json" ? JSON.parse(text) : text;
    }
    async getWithMetadata(key, opts) {
      const v = N.kvGet(this._ns, String(key));
      if (v === null) return { value: null, metadata: null };
      const value = await this.get(key, opts);
      return { value, metadata: v[1] == null ? null : JSON.parse(v[1]) };
    }
    async put(key, value, opts = {}) {
      let b;
      if (typeof value === "string") b = enc.encode(value);
      else if (value instanceof ReadableStream) b = await drain(value);
      else b = bytesOf(value);
      const meta = opts.metadata === undefined ? null : JSON.stringify(opts.metadata);
      let expires = 0;
      if (opts.expiration) expires = Number(opts.expiration) * 1000;
      else if (opts.expirationTtl) expires = N.now() + Number(opts.expirationTtl) * 1000;
      N.kvPut(this._ns, String(key), b, meta, expires);
    }
    async delete(key) { N.kvDelete(this._ns, String(key)); }
    async list(opts = {}) {
      return JSON.parse(N.kvList(this._ns, String(opts.prefix || ""), Number(opts.limit || 1000), String(opts.cursor || "")));
    }
  }

  // ---- the node's entry points --------------------------------------------
  let waits = [];
  let handler = null;
  let envObj = null;
  const ctx = {
    waitUntil(p) { waits.push(Promise.resolve(p)); },
    passThroughOnException() {},
    revalidate(path) { N.revalidate("path", String(path)); },
    revalidateTag(tag) { N.revalidate("tag", String(tag)); },
  };
  function bind(mod, env) {
    const h = mod.default;
    if (!h || typeof h.fetch !== "function")
      throw new TypeError("the module's default export has no fetch(request, env, ctx) handler");
    handler = h;
    envObj = {};
    for (const [k, v] of env.vars) envObj[k] = v;
    for (const k of env.kv) envObj[k] = new KVNamespace(k);
    Object.freeze(envObj);
  }
  // One request: resolves to [status, flat headers, body bytes or null,
  // whether the body is a stream still to be read with next()].
  let streaming = null;
  async function dispatch(method, url, flat, body) {
    waits = [];
    streaming = null;
    const headers = headersFromFlat(flat);
    const req = new Request(url, { method, headers, body: body == null ? undefined : new Uint8Array(body) });
    req.headers._guard = true;
    const res = await handler.fetch(req, envObj, ctx);
    if (!(res instanceof Response)) throw new TypeError("Incorrect type for Promise: the Promise did not resolve to 'Response'.");
    const b = res._body;
    if (b instanceof ReadableStream) {
      streaming = b.getReader();
      return [res.status, flatHeaders(res.headers), null, true];
    }
    return [res.status, flatHeaders(res.headers), b === null ? null : b, false];
  }
  // The next chunk of a streamed body: bytes, or null at its end.
  async function next() {
    const { value, done } = await streaming.read();
    if (done) { streaming = null; return null; }
    return typeof value === "string" ? enc.encode(value) : bytesOf(value);
  }
  function settle() { const w = waits; waits = []; return Promise.allSettled(w); }

  const hidden = { bind, dispatch, next, settle, runTimers, pendingWaits: () => waits.length };
  Object.defineProperty(G, "__tessera", { value: hidden, enumerable: false, configurable: false, writable: false });

  def("TextEncoder", TextEncoder);
  def("TextDecoder", TextDecoder);
  def("URL", URL);
  def("URLSearchParams", URLSearchParams);
  def("Headers", Headers);
  def("Request", Request);
  def("Response", Response);
  def("ReadableStream", ReadableStream);
  def("ReadableStreamDefaultReader", ReadableStreamDefaultReader);
  def("WritableStream", WritableStream);
  def("TransformStream", TransformStream);
  def("TextEncoderStream", TextEncoderStream);
  def("TextDecoderStream", TextDecoderStream);
  def("crypto", crypto);
  def("DOMException", DOMException);
  def("AbortController", AbortController);
  def("AbortSignal", AbortSignal);
  def("fetch", fetch);
  def("console", console);
  def("btoa", btoa);
  def("atob", atob);
  def("setTimeout", (f, ms, ...a) => addTimer(f, ms, a, false));
  def("setInterval", (f, ms, ...a) => addTimer(f, ms, a, true));
  def("clearTimeout", (id) => { timers.delete(id); });
  def("clearInterval", (id) => { timers.delete(id); });
  if (typeof G.queueMicrotask !== "function") def("queueMicrotask", (f) => { Promise.resolve().then(f); });
  if (typeof G.structuredClone !== "function") def("structuredClone", (v) => (v === undefined ? undefined : JSON.parse(JSON.stringify(v))));
  def("performance", { now: () => N.now() - N.start, timeOrigin: N.start });
  def("navigator", { userAgent: "Tessera-Workers", hardwareConcurrency: 1 });
  def("self", G);
})(globalThis.__native);
delete globalThis.__native;
