//! The JavaScript engine: QuickJS (through `rquickjs`) running Workers-style
//! module scripts.
//!
//! - **Compile once.** A deployed script is compiled to QuickJS bytecode once
//!   per node ([`Script::compile`]); every worker thread loads that bytecode
//!   into its own isolate instead of parsing the source again.
//! - **Warm isolates.** Each worker thread keeps one isolate (a QuickJS
//!   runtime with one context) per function it has served, up to
//!   [`ISOLATES_PER_THREAD`], least recently used dropped first. An isolate
//!   keeps its globals between requests, as a Workers isolate does. A new
//!   version of the function (another script, env or limits) gets a new one.
//! - **Limits.** CPU time (the thread's own CPU clock, checked by QuickJS's
//!   interrupt handler every few thousand bytecodes), wall time, memory (the
//!   runtime's allocation limit) and stack depth are enforced here; the
//!   subrequest count in `fetch`. A request past a limit fails with
//!   [`Failure::Limit`], and the isolate that ran it is dropped (its heap
//!   may be half-built), so the next request starts from a fresh one.
//! - **Sandbox.** The context has the ECMAScript built-ins and the Workers
//!   API of `runtime.js`, nothing else: no `std`/`os` modules, no module
//!   loader (a deployed module is one bundled file), no file system, no
//!   sockets; the only way out is the host's `fetch`, KV and log.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rquickjs::function::Opt;
use rquickjs::prelude::Func;
use rquickjs::{
    ArrayBuffer, Context, Ctx, Function, Module, Object, Promise, Runtime, TypedArray, Value,
};

use crate::{Limit, Limits};

/// Isolates one worker thread keeps warm.
pub const ISOLATES_PER_THREAD: usize = 64;

/// The Workers API, evaluated in every new context before the module.
const RUNTIME_JS: &str = include_str!("js/runtime.js");

/// `runtime.js` compiled to bytecode once per process (as a module): a new
/// isolate loads it instead of parsing 800 lines again.
static RUNTIME_BYTECODE: std::sync::OnceLock<Result<Vec<u8>, String>> = std::sync::OnceLock::new();

fn runtime_bytecode() -> Result<&'static [u8], String> {
    RUNTIME_BYTECODE
        .get_or_init(|| {
            let rt = Runtime::new().map_err(|e| e.to_string())?;
            let ctx = Context::full(&rt).map_err(|e| e.to_string())?;
            ctx.with(|ctx| {
                Module::declare(ctx.clone(), "tessera:runtime", RUNTIME_JS)
                    .and_then(|m| m.write(rquickjs::module::WriteOptions::default()))
                    .map_err(|e| describe(&ctx, e))
            })
        })
        .as_deref()
        .map_err(Clone::clone)
}

/// What the engine asks of the node for a running script.
pub trait Host: Send + Sync {
    /// A subrequest (`fetch()`); Err says why it failed (a `TypeError` in
    /// the script).
    fn fetch(
        &self,
        function: &str,
        req: SubRequest,
        timeout: Duration,
    ) -> Result<SubResponse, String>;
    /// KV: `(value, metadata JSON)` of `key` in namespace `ns`.
    fn kv_get(&self, function: &str, ns: &str, key: &str) -> Option<(Vec<u8>, Option<String>)>;
    /// Err: why the write was refused (a size limit).
    fn kv_put(
        &self,
        function: &str,
        ns: &str,
        key: &str,
        value: &[u8],
        metadata: Option<String>,
        expires_ms: u64,
    ) -> Result<(), String>;
    fn kv_delete(&self, function: &str, ns: &str, key: &str);
    /// The Workers `list()` result as JSON.
    fn kv_list(&self, function: &str, ns: &str, prefix: &str, limit: usize, cursor: &str)
        -> String;
    /// `ctx.revalidate(path)` / `ctx.revalidateTag(tag)`.
    fn revalidate(&self, function: &str, kind: &str, what: &str);
}

/// A subrequest as the script made it.
#[derive(Debug, Clone)]
pub struct SubRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub follow_redirects: bool,
}

#[derive(Debug, Clone)]
pub struct SubResponse {
    pub status: u16,
    pub status_text: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub url: String,
}

/// A deployed script, compiled.
pub struct Script {
    /// The function's name (logs, KV namespaces).
    pub name: Arc<str>,
    /// What distinguishes one deployment of the function from the next
    /// (script, env, limits): an isolate built for another is rebuilt.
    pub version: u64,
    /// BLAKE3 of the source.
    pub code: [u8; 32],
    bytecode: Vec<u8>,
    /// `{"vars": [[k, v], ...], "kv": [name, ...]}`.
    env_json: String,
    pub limits: Limits,
}

impl Script {
    /// Compiles `source` (an ES module whose default export has `fetch`).
    /// Err: the syntax error, with its line, in words for the deployer.
    pub fn compile(
        name: &str,
        version: u64,
        source: &str,
        vars: &[(String, String)],
        kv: &[String],
        limits: Limits,
    ) -> Result<Script, String> {
        let rt = Runtime::new().map_err(|e| format!("cannot start QuickJS: {e}"))?;
        rt.set_memory_limit(256 << 20);
        let ctx = Context::full(&rt).map_err(|e| format!("cannot start QuickJS: {e}"))?;
        let bytecode = ctx.with(|ctx| {
            let module = Module::declare(ctx.clone(), format!("{name}.js"), source)
                .map_err(|e| describe(&ctx, e))?;
            module
                .write(rquickjs::module::WriteOptions::default())
                .map_err(|e| describe(&ctx, e))
        })?;
        let env_json = serde_json::json!({ "vars": vars, "kv": kv }).to_string();
        Ok(Script {
            name: name.into(),
            version,
            code: *blake3::hash(source.as_bytes()).as_bytes(),
            bytecode,
            env_json,
            limits,
        })
    }
}

/// A request as the script sees it.
pub struct Incoming<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    pub body: Option<&'a [u8]>,
}

/// The script's answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The whole body; empty when `streaming`.
    pub body: Vec<u8>,
    /// The body is a stream: read it with [`next_chunk`] on this thread.
    pub streaming: bool,
    /// `ctx.waitUntil` work still pending: run [`settle`] on this thread
    /// after the answer is sent.
    pub waiting: bool,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Past a limit: answered 503 naming it.
    Limit(Limit),
    /// The script threw, or answered with something that is not a
    /// `Response`: answered 500, the message in the node's log.
    Script(String),
}

/// What one request cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    pub cpu: Duration,
    /// A new isolate was built for it (a cold start).
    pub cold: bool,
}

/// What the native functions share with the runner, per isolate.
struct Guard {
    cpu_start: Cell<Duration>,
    cpu_limit: Cell<Duration>,
    wall_deadline: Cell<Option<Instant>>,
    tripped: Cell<Option<Limit>>,
    subrequests: Cell<u32>,
}

impl Guard {
    fn check(&self) -> bool {
        if self.tripped.get().is_some() {
            return true;
        }
        if let Some(deadline) = self.wall_deadline.get() {
            if thread_cpu().saturating_sub(self.cpu_start.get()) > self.cpu_limit.get() {
                self.tripped.set(Some(Limit::Cpu));
                return true;
            }
            if Instant::now() > deadline {
                self.tripped.set(Some(Limit::Wall));
                return true;
            }
        }
        false
    }
}

/// The calling thread's CPU time.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is
    // always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

struct Isolate {
    version: u64,
    // Field order: the context is dropped before its runtime.
    ctx: Context,
    rt: Runtime,
    guard: Rc<Guard>,
    last_used: Cell<u64>,
}

thread_local! {
    static ISOLATES: RefCell<HashMap<Arc<str>, Isolate>> = RefCell::new(HashMap::new());
    static CLOCK: Cell<u64> = const { Cell::new(0) };
}

/// Runs one request through `script` on this thread's warm isolate for it
/// (built first if there is none). On [`Failure::Limit`] the isolate is
/// dropped.
pub fn run(
    script: &Arc<Script>,
    host: &Arc<dyn Host>,
    req: Incoming<'_>,
) -> (Result<Answer, Failure>, Cost) {
    let start = thread_cpu();
    let mut cost = Cost::default();
    let result = ISOLATES.with(|isolates| {
        let mut isolates = isolates.borrow_mut();
        let fresh = isolates
            .get(&script.name)
            .is_none_or(|i| i.version != script.version);
        if fresh {
            cost.cold = true;
            isolates.remove(&script.name);
            if isolates.len() >= ISOLATES_PER_THREAD {
                let oldest = isolates
                    .iter()
                    .min_by_key(|(_, i)| i.last_used.get())
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    isolates.remove(&k);
                }
            }
            let isolate = Isolate::new(script, host)?;
            isolates.insert(script.name.clone(), isolate);
        }
        let Some(isolate) = isolates.get(&script.name) else {
            return Err(Failure::Script("no isolate".into()));
        };
        isolate.last_used.set(CLOCK.with(|c| {
            c.set(c.get() + 1);
            c.get()
        }));
        let r = isolate.dispatch(script, req);
        if matches!(r, Err(Failure::Limit(_))) {
            isolates.remove(&script.name);
        }
        r
    });
    cost.cpu = thread_cpu().saturating_sub(start);
    (result, cost)
}

/// The next chunk of the streamed body of the last [`run`] of `script` on
/// this thread: Some(bytes), None at its end.
pub fn next_chunk(script: &Arc<Script>) -> Result<Option<Vec<u8>>, Failure> {
    with_isolate(script, |i| i.next_chunk(script))
}

/// Runs what `ctx.waitUntil` was given, until it settles or a limit passes.
pub fn settle(script: &Arc<Script>) -> Result<(), Failure> {
    with_isolate(script, |i| i.settle(script))
}

fn with_isolate<T>(
    script: &Arc<Script>,
    f: impl FnOnce(&Isolate) -> Result<T, Failure>,
) -> Result<T, Failure> {
    ISOLATES.with(|isolates| {
        let mut isolates = isolates.borrow_mut();
        let Some(isolate) = isolates
            .get(&script.name)
            .filter(|i| i.version == script.version)
        else {
            return Err(Failure::Script("the isolate is gone".into()));
        };
        let r = f(isolate);
        if matches!(r, Err(Failure::Limit(_))) {
            isolates.remove(&script.name);
        }
        r
    })
}

/// Heap bytes of this thread's isolate for `name`, if it has one.
pub fn isolate_memory(name: &str) -> Option<u64> {
    ISOLATES.with(|isolates| {
        isolates
            .borrow()
            .get(name)
            .map(|i| i.rt.memory_usage().memory_used_size as u64)
    })
}

/// Drops every isolate of this thread (for measuring a cold start).
pub fn drop_isolates() {
    ISOLATES.with(|isolates| isolates.borrow_mut().clear());
}

/// An exception as text: `Name: message` and the stack, if any.
fn describe(ctx: &Ctx<'_>, e: rquickjs::Error) -> String {
    if !matches!(e, rquickjs::Error::Exception) {
        return e.to_string();
    }
    exception_text(&ctx.catch())
}

fn exception_text(v: &Value<'_>) -> String {
    if let Some(obj) = v.as_object() {
        let name: Option<String> = obj.get("name").ok();
        let message: Option<String> = obj.get("message").ok();
        let stack: Option<String> = obj.get("stack").ok();
        if let Some(message) = message {
            let mut s = format!("{}: {message}", name.unwrap_or_else(|| "Error".into()));
            if let Some(stack) = stack.filter(|s| !s.is_empty()) {
                s.push('\n');
                s.push_str(stack.trim_end());
            }
            return s;
        }
    }
    match v.as_string().and_then(|s| s.to_string().ok()) {
        Some(s) => s,
        None => format!("{v:?}"),
    }
}

/// The bytes a Uint8Array views, copied.
fn view_bytes(a: &TypedArray<'_, u8>) -> Vec<u8> {
    // SAFETY: the slice is copied at once, before any JavaScript runs again.
    unsafe { a.as_bytes() }
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

fn type_error(ctx: &Ctx<'_>, msg: &str) -> rquickjs::Error {
    rquickjs::Exception::throw_type(ctx, msg)
}

fn flat_pairs(flat: &[String]) -> Vec<(String, String)> {
    flat.chunks_exact(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect()
}

fn url_parts(u: &url::Url) -> Vec<String> {
    let port = u.port().map(|p| p.to_string()).unwrap_or_default();
    let host = match u.host_str() {
        Some(h) if !port.is_empty() => format!("{h}:{port}"),
        Some(h) => h.to_string(),
        None => String::new(),
    };
    let origin = u.origin().ascii_serialization();
    let search = match u.query() {
        Some(q) if !q.is_empty() => format!("?{q}"),
        _ => String::new(),
    };
    let hash = match u.fragment() {
        Some(f) if !f.is_empty() => format!("#{f}"),
        _ => String::new(),
    };
    vec![
        u.as_str().to_string(),
        format!("{}:", u.scheme()),
        u.username().to_string(),
        u.password().unwrap_or("").to_string(),
        host,
        u.host_str().unwrap_or("").to_string(),
        port,
        u.path().to_string(),
        search,
        hash,
        if origin == "null" {
            "null".into()
        } else {
            origin
        },
    ]
}

fn url_set(href: &str, field: &str, value: &str) -> Option<Vec<String>> {
    let mut u = url::Url::parse(href).ok()?;
    let v = value;
    let ok = match field {
        "href" => match url::Url::parse(v) {
            Ok(n) => {
                u = n;
                true
            }
            Err(_) => false,
        },
        "protocol" => u.set_scheme(v.trim_end_matches(':')).is_ok(),
        "username" => u.set_username(v).is_ok(),
        "password" => u.set_password(Some(v).filter(|s| !s.is_empty())).is_ok(),
        "host" => {
            let (h, p) = match v.rsplit_once(':') {
                Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() => {
                    (h, p.parse::<u16>().ok())
                }
                _ => (v, None),
            };
            let ok = u.set_host(Some(h)).is_ok();
            if ok && p.is_some() {
                let _ = u.set_port(p);
            }
            ok
        }
        "hostname" => u.set_host(Some(v)).is_ok(),
        "port" => u
            .set_port(if v.is_empty() { None } else { v.parse().ok() })
            .is_ok(),
        "pathname" => {
            u.set_path(v);
            true
        }
        "search" => {
            let q = v.strip_prefix('?').unwrap_or(v);
            u.set_query(if q.is_empty() { None } else { Some(q) });
            true
        }
        "hash" => {
            let f = v.strip_prefix('#').unwrap_or(v);
            u.set_fragment(if f.is_empty() { None } else { Some(f) });
            true
        }
        _ => false,
    };
    ok.then(|| url_parts(&u))
}

fn digest(name: &str, data: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    Some(match name {
        "SHA-1" => sha1::Sha1::digest(data).to_vec(),
        "SHA-256" => sha2::Sha256::digest(data).to_vec(),
        "SHA-384" => sha2::Sha384::digest(data).to_vec(),
        "SHA-512" => sha2::Sha512::digest(data).to_vec(),
        "MD5" => md5::Md5::digest(data).to_vec(),
        _ => return None,
    })
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

impl Isolate {
    fn new(script: &Arc<Script>, host: &Arc<dyn Host>) -> Result<Isolate, Failure> {
        let fail = |e: rquickjs::Error| Failure::Script(format!("cannot start an isolate: {e}"));
        let rt = Runtime::new().map_err(fail)?;
        let limits = &script.limits;
        rt.set_memory_limit(limits.memory_bytes() as usize);
        rt.set_max_stack_size(limits.stack_bytes());
        let guard = Rc::new(Guard {
            cpu_start: Cell::new(thread_cpu()),
            cpu_limit: Cell::new(limits.cpu()),
            wall_deadline: Cell::new(Some(Instant::now() + limits.wall())),
            tripped: Cell::new(None),
            subrequests: Cell::new(0),
        });
        let g = guard.clone();
        rt.set_interrupt_handler(Some(Box::new(move || g.check())));
        let ctx = Context::full(&rt).map_err(fail)?;
        let isolate = Isolate {
            version: script.version,
            ctx,
            rt,
            guard,
            last_used: Cell::new(0),
        };
        // Loading the module counts against the request's CPU and wall
        // limits like the rest of it (a top-level infinite loop is stopped).
        isolate.arm(&script.limits);
        let r = isolate.ctx.with(|ctx| -> Result<(), Failure> {
            isolate
                .install(&ctx, script, host)
                .map_err(|e| isolate.failure(&ctx, e))?;
            // SAFETY: the bytecode was written by `Script::compile` on this
            // node from the deployed source, by this same QuickJS build; it
            // never comes from the network.
            let module = unsafe { Module::load(ctx.clone(), &script.bytecode) }
                .map_err(|e| isolate.failure(&ctx, e))?;
            let (module, promise) = module.eval().map_err(|e| isolate.failure(&ctx, e))?;
            isolate.drive(&ctx, &promise)?;
            promise
                .result::<Value>()
                .unwrap_or(Ok(Value::new_undefined(ctx.clone())))
                .map_err(|e| isolate.failure(&ctx, e))?;
            let ns = module.namespace().map_err(|e| isolate.failure(&ctx, e))?;
            let env = ctx
                .json_parse(script.env_json.clone())
                .map_err(|e| isolate.failure(&ctx, e))?;
            let bind: Function = hidden(&ctx)
                .and_then(|h| h.get("bind"))
                .map_err(|e| isolate.failure(&ctx, e))?;
            bind.call::<_, ()>((ns, env))
                .map_err(|e| isolate.failure(&ctx, e))?;
            Ok(())
        });
        isolate.disarm();
        r.map(|()| isolate)
    }

    fn arm(&self, limits: &Limits) {
        let g = &self.guard;
        g.tripped.set(None);
        g.subrequests.set(0);
        g.cpu_start.set(thread_cpu());
        g.cpu_limit.set(limits.cpu());
        g.wall_deadline.set(Some(Instant::now() + limits.wall()));
    }

    fn disarm(&self) {
        self.guard.wall_deadline.set(None);
    }

    /// The failure for an error out of QuickJS: a tripped limit first (the
    /// interrupt surfaces as an "interrupted" exception), else the
    /// exception, recognising the engine's own out-of-memory and stack
    /// errors as the limits they are.
    fn failure(&self, ctx: &Ctx<'_>, e: rquickjs::Error) -> Failure {
        let text = describe(ctx, e);
        if let Some(limit) = self.guard.tripped.get() {
            return Failure::Limit(limit);
        }
        if text.starts_with("InternalError: out of memory") || text == "null" {
            return Failure::Limit(Limit::Memory);
        }
        if text.starts_with("RangeError: Maximum call stack size exceeded") {
            return Failure::Limit(Limit::Stack);
        }
        Failure::Script(text)
    }

    /// Runs the job queue and the timers until `promise` settles, a limit
    /// passes, or nothing is left that could settle it.
    fn drive<'js>(&self, ctx: &Ctx<'js>, promise: &Promise<'js>) -> Result<(), Failure> {
        let timers: Option<Function> = hidden(ctx).and_then(|h| h.get("runTimers")).ok();
        loop {
            while ctx.execute_pending_job() {
                if let Some(limit) = self.guard.tripped.get() {
                    return Err(Failure::Limit(limit));
                }
            }
            if let Some(limit) = self.guard.tripped.get() {
                return Err(Failure::Limit(limit));
            }
            if !matches!(promise.state(), rquickjs::promise::PromiseState::Pending) {
                return Ok(());
            }
            let next: f64 = match &timers {
                Some(t) => t.call(()).map_err(|e| self.failure(ctx, e))?,
                None => -1.0,
            };
            if ctx.execute_pending_job() {
                continue;
            }
            if next < 0.0 {
                return Err(Failure::Script(
                    "the script will never generate a response: its promise is pending \
                     and nothing it waits for is left"
                        .into(),
                ));
            }
            let Some(deadline) = self.guard.wall_deadline.get() else {
                return Err(Failure::Limit(Limit::Wall));
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.guard.tripped.set(Some(Limit::Wall));
                return Err(Failure::Limit(Limit::Wall));
            }
            std::thread::sleep(Duration::from_secs_f64(next / 1000.0).min(left));
        }
    }

    /// Calls a hidden entry point and waits for the promise it returns.
    fn call_async<'js, A: rquickjs::function::IntoArgs<'js>>(
        &self,
        ctx: &Ctx<'js>,
        entry: &str,
        args: A,
    ) -> Result<Value<'js>, Failure> {
        let f: Function = hidden(ctx)
            .and_then(|h| h.get(entry))
            .map_err(|e| self.failure(ctx, e))?;
        let promise: Promise = f.call(args).map_err(|e| self.failure(ctx, e))?;
        self.drive(ctx, &promise)?;
        match promise.result::<Value>() {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(self.failure(ctx, e)),
            None => Err(Failure::Script("the promise did not settle".into())),
        }
    }

    fn dispatch(&self, script: &Script, req: Incoming<'_>) -> Result<Answer, Failure> {
        self.arm(&script.limits);
        let r = self.ctx.with(|ctx| -> Result<Answer, Failure> {
            let err = |e| self.failure(&ctx, e);
            let mut flat = Vec::with_capacity(req.headers.len() * 2);
            for (n, v) in req.headers {
                flat.push(n.as_str());
                flat.push(v.as_str());
            }
            let body = match req.body {
                Some(b) => Some(ArrayBuffer::new_copy(ctx.clone(), b).map_err(err)?),
                None => None,
            };
            let v = self.call_async(&ctx, "dispatch", (req.method, req.url, flat, body))?;
            let arr = v
                .into_array()
                .ok_or_else(|| Failure::Script("dispatch: not an array".into()))?;
            let status: i32 = arr.get(0).map_err(err)?;
            let flat: Vec<String> = arr.get(1).map_err(err)?;
            let body: Value = arr.get(2).map_err(err)?;
            let streaming: bool = arr.get(3).map_err(err)?;
            let body = if body.is_null() || body.is_undefined() {
                Vec::new()
            } else {
                view_bytes(&TypedArray::<u8>::from_value(body).map_err(err)?)
            };
            let limit = script.limits.response_body_bytes();
            if body.len() as u64 > limit {
                return Err(Failure::Limit(Limit::ResponseBody));
            }
            let waiting: i32 = hidden(&ctx)
                .and_then(|h| h.get::<_, Function>("pendingWaits"))
                .and_then(|f| f.call(()))
                .map_err(err)?;
            Ok(Answer {
                status: u16::try_from(status).unwrap_or(500),
                headers: flat_pairs(&flat),
                body,
                streaming,
                waiting: waiting > 0,
            })
        });
        self.disarm();
        r
    }

    fn next_chunk(&self, script: &Script) -> Result<Option<Vec<u8>>, Failure> {
        self.arm(&script.limits);
        let r = self.ctx.with(|ctx| {
            let v = self.call_async(&ctx, "next", ())?;
            if v.is_null() || v.is_undefined() {
                return Ok(None);
            }
            let ta = TypedArray::<u8>::from_value(v).map_err(|e| self.failure(&ctx, e))?;
            Ok(Some(view_bytes(&ta)))
        });
        self.disarm();
        r
    }

    fn settle(&self, script: &Script) -> Result<(), Failure> {
        self.arm(&script.limits);
        let r = self
            .ctx
            .with(|ctx| self.call_async(&ctx, "settle", ()).map(|_| ()));
        self.disarm();
        r
    }

    /// The native functions `runtime.js` builds the Workers API on, then
    /// `runtime.js` itself.
    fn install<'js>(
        &self,
        ctx: &Ctx<'js>,
        script: &Arc<Script>,
        host: &Arc<dyn Host>,
    ) -> rquickjs::Result<()> {
        let n = Object::new(ctx.clone())?;
        n.set(
            "encode",
            Func::from(|ctx: Ctx<'js>, s: rquickjs::Coerced<String>| {
                ArrayBuffer::new(ctx, s.0.into_bytes())
            }),
        )?;
        n.set(
            "decode",
            Func::from(|ctx: Ctx<'js>, bytes: TypedArray<'js, u8>, fatal: bool| {
                let bytes = view_bytes(&bytes);
                match String::from_utf8(bytes) {
                    Ok(s) => Ok(s),
                    Err(_) if fatal => Err(type_error(
                        &ctx,
                        "The encoded data was not valid for encoding utf-8",
                    )),
                    Err(e) => Ok(String::from_utf8_lossy(e.as_bytes()).into_owned()),
                }
            }),
        )?;
        n.set(
            "randomBytes",
            Func::from(|ctx: Ctx<'js>, len: usize| {
                let mut b = vec![0u8; len.min(65536)];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
                ArrayBuffer::new(ctx, b)
            }),
        )?;
        n.set(
            "digest",
            Func::from(|ctx: Ctx<'js>, name: String, bytes: TypedArray<'js, u8>| {
                let bytes = view_bytes(&bytes);
                match digest(&name, &bytes) {
                    Some(d) => ArrayBuffer::new(ctx, d),
                    None => Err(type_error(&ctx, "Unrecognized algorithm name")),
                }
            }),
        )?;
        n.set(
            "urlParse",
            Func::from(|input: String, base: Opt<String>| {
                let parsed = match base.0 {
                    Some(b) => url::Url::parse(&b).and_then(|b| b.join(&input)),
                    None => url::Url::parse(&input),
                };
                parsed.ok().map(|u| url_parts(&u))
            }),
        )?;
        n.set(
            "urlSet",
            Func::from(|href: String, field: String, value: String| url_set(&href, &field, &value)),
        )?;
        n.set(
            "percentDecode",
            Func::from(|s: String| {
                percent_encoding::percent_decode_str(&s)
                    .decode_utf8_lossy()
                    .into_owned()
            }),
        )?;
        n.set("now", Func::from(now_ms))?;
        n.set("start", now_ms())?;
        n.set(
            "btoa",
            Func::from(|s: String| {
                use base64::Engine;
                let bytes: Vec<u8> = s.chars().map(|c| c as u32 as u8).collect();
                base64::engine::general_purpose::STANDARD.encode(bytes)
            }),
        )?;
        n.set(
            "atob",
            Func::from(|s: String| {
                use base64::Engine;
                let e = base64::engine::GeneralPurpose::new(
                    &base64::alphabet::STANDARD,
                    base64::engine::GeneralPurposeConfig::new()
                        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
                );
                e.decode(s.as_bytes())
                    .ok()
                    .map(|b| b.into_iter().map(char::from).collect::<String>())
            }),
        )?;
        let name = script.name.clone();
        n.set(
            "log",
            Func::from(move |level: String, msg: String| {
                let msg: String = msg.chars().take(16 * 1024).collect();
                match level.as_str() {
                    "error" => tracing::error!(function = %name, "{msg}"),
                    "warn" => tracing::warn!(function = %name, "{msg}"),
                    "debug" => tracing::debug!(function = %name, "{msg}"),
                    _ => tracing::info!(function = %name, "{msg}"),
                }
            }),
        )?;
        let (h, name, guard) = (host.clone(), script.name.clone(), self.guard.clone());
        let max_sub = script.limits.subrequests;
        n.set(
            "fetch",
            Func::from(
                move |ctx: Ctx<'js>,
                      method: String,
                      url: String,
                      flat: Vec<String>,
                      body: Option<TypedArray<'js, u8>>,
                      follow: bool|
                      -> rquickjs::Result<Value<'js>> {
                    let used = guard.subrequests.get() + 1;
                    if used > max_sub {
                        guard.tripped.set(Some(Limit::Subrequests));
                        return Err(type_error(
                            &ctx,
                            &format!("too many subrequests: the limit is {max_sub} per request"),
                        ));
                    }
                    guard.subrequests.set(used);
                    let body = body.map(|b| view_bytes(&b));
                    let left = guard
                        .wall_deadline
                        .get()
                        .map(|d| d.saturating_duration_since(Instant::now()))
                        .unwrap_or_default();
                    let sub = SubRequest {
                        method,
                        url,
                        headers: flat_pairs(&flat),
                        body,
                        follow_redirects: follow,
                    };
                    let r = h
                        .fetch(&name, sub, left)
                        .map_err(|why| type_error(&ctx, &why))?;
                    let arr = rquickjs::Array::new(ctx.clone())?;
                    arr.set(0, r.status)?;
                    arr.set(1, r.status_text)?;
                    let mut flat = Vec::with_capacity(r.headers.len() * 2);
                    for (k, v) in r.headers {
                        flat.push(k);
                        flat.push(v);
                    }
                    arr.set(2, flat)?;
                    arr.set(3, ArrayBuffer::new(ctx.clone(), r.body)?)?;
                    arr.set(4, r.url)?;
                    Ok(arr.into_value())
                },
            ),
        )?;
        let (h, name) = (host.clone(), script.name.clone());
        n.set(
            "kvGet",
            Func::from(
                move |ctx: Ctx<'js>, ns: String, key: String| -> rquickjs::Result<Value<'js>> {
                    match h.kv_get(&name, &ns, &key) {
                        None => Ok(Value::new_null(ctx)),
                        Some((v, meta)) => {
                            let arr = rquickjs::Array::new(ctx.clone())?;
                            arr.set(0, ArrayBuffer::new(ctx.clone(), v)?)?;
                            arr.set(1, meta)?;
                            Ok(arr.into_value())
                        }
                    }
                },
            ),
        )?;
        let (h, name) = (host.clone(), script.name.clone());
        n.set(
            "kvPut",
            Func::from(
                move |ctx: Ctx<'js>,
                      ns: String,
                      key: String,
                      value: TypedArray<'js, u8>,
                      meta: Option<String>,
                      expires: f64|
                      -> rquickjs::Result<()> {
                    let bytes = view_bytes(&value);
                    h.kv_put(&name, &ns, &key, &bytes, meta, expires.max(0.0) as u64)
                        .map_err(|why| type_error(&ctx, &why))
                },
            ),
        )?;
        let (h, name) = (host.clone(), script.name.clone());
        n.set(
            "kvDelete",
            Func::from(move |ns: String, key: String| h.kv_delete(&name, &ns, &key)),
        )?;
        let (h, name) = (host.clone(), script.name.clone());
        n.set(
            "kvList",
            Func::from(
                move |ns: String, prefix: String, limit: usize, cursor: String| {
                    h.kv_list(&name, &ns, &prefix, limit.clamp(1, 1000), &cursor)
                },
            ),
        )?;
        let (h, name) = (host.clone(), script.name.clone());
        n.set(
            "revalidate",
            Func::from(move |kind: String, what: String| h.revalidate(&name, &kind, &what)),
        )?;
        ctx.globals().set("__native", n)?;
        let bytecode = runtime_bytecode().map_err(|e| {
            rquickjs::Exception::throw_internal(
                ctx,
                &format!("the Workers API did not compile: {e}"),
            )
        })?;
        // SAFETY: the bytecode was written by `runtime_bytecode` in this
        // process, by this QuickJS build, from the runtime's own source.
        let (_, promise) = unsafe { Module::load(ctx.clone(), bytecode) }?.eval()?;
        // The runtime awaits nothing: its evaluation is done once the job
        // queue is.
        while ctx.execute_pending_job() {}
        promise
            .result::<Value>()
            .unwrap_or(Ok(Value::new_undefined(ctx.clone())))?;
        Ok(())
    }
}

fn hidden<'js>(ctx: &Ctx<'js>) -> rquickjs::Result<Object<'js>> {
    ctx.globals().get("__tessera")
}
