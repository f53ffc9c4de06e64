//! The WebAssembly engine: wasmtime serving components that export
//! `wasi:http/incoming-handler` (wasi-http 0.2), as `wasmtime serve`, Spin
//! and Fastly's Compute do.
//!
//! - **Compile once.** A deployed component is compiled to machine code once
//!   per node and linked ahead of time into a `ProxyPre` (wasmtime's
//!   `InstancePre` for the proxy world): the imports are resolved then, not
//!   per request.
//! - **An instance per request**, from the pooling allocator (slots of
//!   memory and tables reserved up front and reused, made copy-on-write from
//!   the component's initial image), so instantiating costs microseconds
//!   for a small component and nothing is shared between requests.
//! - **Limits.** CPU time by epoch interruption (a thread ticks the engine's
//!   epoch every millisecond; on each tick a callback reads the worker
//!   thread's CPU clock and stops the guest past its CPU limit, so time
//!   spent waiting is not charged); memory by a `ResourceLimiter` (growth past the limit is
//!   refused and reported as the memory limit); wall time by a timeout
//!   around the whole request.
//! - **Sandbox.** The WASI context holds only the spec's vars and secrets,
//!   as its environment: no preopened directories, no arguments, no
//!   inherited stdio, no sockets; `wasi:http/outgoing-handler` (the
//!   component's `fetch`) goes through the node's [`Host::fetch`], the road
//!   a script's `fetch` takes, within the subrequest limit.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::js::{Answer, Cost, Failure, Host, Incoming, SubRequest};
use crate::{Limit, Limits};

/// Instances the pool holds at once (a worker thread runs one at a time).
const POOL_INSTANCES: u32 = 256;
/// The largest linear memory an instance may grow to (a spec's limit is at
/// most this).
const POOL_MEMORY: usize = 1 << 30;

struct State {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: Outgoing,
    table: ResourceTable,
    limiter: Limiter,
}

/// wasi-http's hooks: a component's outgoing requests (its `fetch`) go
/// through the node's [`Host::fetch`], the same road a script's `fetch`
/// takes (no address on the node's own networks unless the operator allows
/// them), at most `left` of them per request, run on the runtime's blocking
/// pool. Without a host (the benchmark) they are refused.
struct Outgoing {
    host: Option<Arc<dyn Host>>,
    function: Arc<str>,
    left: u32,
    timeout: Duration,
    /// The largest request body a component may send.
    max_body: u64,
}

type OutBody = http_body_util::combinators::UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;
type Done = Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;
type Sent = Box<
    dyn std::future::Future<
            Output = Result<(http::Response<OutBody>, Done), wasmtime_wasi_http::Error>,
        > + Send,
>;

impl wasmtime_wasi_http::WasiHttpHooks for Outgoing {
    fn send_request(
        &mut self,
        request: http::Request<OutBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Done,
    ) -> Sent {
        use http_body_util::BodyExt;
        use wasmtime_wasi_http::Error as E;
        let Some(host) = self.host.clone() else {
            return Box::new(async { Err(E::HttpRequestDenied) });
        };
        if self.left == 0 {
            tracing::info!(function = %self.function, "a component's subrequest past its limit refused");
            return Box::new(async { Err(E::HttpRequestDenied) });
        }
        self.left -= 1;
        let (function, timeout, max_body) = (self.function.clone(), self.timeout, self.max_body);
        Box::new(async move {
            let (parts, body) = request.into_parts();
            let body = http_body_util::Limited::new(body, max_body as usize)
                .collect()
                .await
                .map_err(|_| E::HttpRequestBodySize(Some(max_body)))?
                .to_bytes();
            let sub = SubRequest {
                method: parts.method.to_string(),
                url: parts.uri.to_string(),
                headers: crate::header_pairs(&parts.headers),
                body: (!body.is_empty()).then(|| body.to_vec()),
                follow_redirects: false,
            };
            let fetched = tokio::task::spawn_blocking(move || host.fetch(&function, sub, timeout))
                .await
                .map_err(|_| E::InternalError(Some("the subrequest's thread failed".into())))?;
            let resp = fetched.map_err(|why| {
                tracing::debug!("a component's subrequest failed: {why}");
                if why.contains("own network") {
                    E::HttpRequestDenied
                } else {
                    E::ConnectionRefused
                }
            })?;
            let mut b = http::Response::builder().status(resp.status);
            for (n, v) in &resp.headers {
                b = b.header(n.as_str(), v.as_str());
            }
            let body = Full::new(Bytes::from(resp.body))
                .map_err(|never| match never {})
                .boxed_unsync();
            let resp = b
                .body(body)
                .map_err(|e| E::InternalError(Some(e.to_string())))?;
            Ok((resp, Box::new(async { Ok(()) }) as Done))
        })
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Memory growth up to the function's limit; past it refused, and noted.
struct Limiter {
    memory: usize,
    denied: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= self.memory;
        if !ok {
            self.denied = true;
        }
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

struct Shared {
    engine: Engine,
    linker: Linker<State>,
}

static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();

/// The process's engine (pooling allocator, epochs, async) and the linker
/// with WASI and wasi-http; the epoch ticker started with it.
fn shared() -> Result<&'static Shared, String> {
    SHARED
        .get_or_init(|| {
            let mut pool = PoolingAllocationConfig::default();
            pool.total_component_instances(POOL_INSTANCES)
                .total_core_instances(POOL_INSTANCES * 4)
                .total_memories(POOL_INSTANCES * 4)
                .total_tables(POOL_INSTANCES * 4)
                .max_memory_size(POOL_MEMORY);
            let mut config = Config::new();
            config
                .epoch_interruption(true)
                .wasm_component_model(true)
                .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
            let engine = Engine::new(&config).map_err(|e| format!("cannot start wasmtime: {e}"))?;
            let mut linker = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| e.to_string())?;
            wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
                .map_err(|e| e.to_string())?;
            let ticker = engine.weak();
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    while let Some(engine) = ticker.upgrade() {
                        engine.increment_epoch();
                        drop(engine);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
                .map_err(|e| format!("cannot start the epoch ticker: {e}"))?;
            Ok(Shared { engine, linker })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A deployed component, compiled and linked.
pub struct WasmScript {
    pub name: Arc<str>,
    pub version: u64,
    /// BLAKE3 of the component.
    pub code: [u8; 32],
    pub limits: Limits,
    /// The spec's vars and secrets, the component's environment
    /// (`wasi:cli/environment`): what `env` is to a script.
    env: Vec<(String, String)>,
    pre: ProxyPre<State>,
}

impl WasmScript {
    /// Compiles `bytes` (a component exporting `wasi:http/incoming-handler`)
    /// and links it. Err: why it cannot be served, in words for the deployer.
    pub fn compile(
        name: &str,
        version: u64,
        bytes: &[u8],
        limits: Limits,
        env: Vec<(String, String)>,
    ) -> Result<WasmScript, String> {
        let shared = shared()?;
        let component = Component::new(&shared.engine, bytes)
            .map_err(|e| format!("not a WebAssembly component this node can run: {e:#}"))?;
        let pre = shared
            .linker
            .instantiate_pre(&component)
            .map_err(|e| format!("the component imports what this node does not give: {e:#}"))?;
        let pre = ProxyPre::new(pre).map_err(|e| {
            format!("the component does not export wasi:http/incoming-handler: {e:#}")
        })?;
        Ok(WasmScript {
            name: name.into(),
            version,
            code: *blake3::hash(bytes).as_bytes(),
            limits,
            env,
            pre,
        })
    }
}

/// Whether `bytes` start as WebAssembly does.
pub fn is_wasm(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\0asm")
}

thread_local! {
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

/// How long the last instantiation on this thread took.
/// `host`: where the component's outgoing requests go (None: refused).
pub fn run(
    script: &WasmScript,
    host: Option<&Arc<dyn Host>>,
    req: Incoming<'_>,
) -> (Result<Answer, Failure>, Cost, Duration) {
    let start = crate::js::thread_cpu();
    let result = RUNTIME.with(|rt| {
        let mut rt = rt.borrow_mut();
        if rt.is_none() {
            *rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .ok();
        }
        match rt.as_ref() {
            Some(rt) => rt.block_on(serve(script, host.cloned(), req)),
            None => (
                Err(Failure::Script("cannot start a runtime".into())),
                Duration::ZERO,
            ),
        }
    });
    let cost = Cost {
        cpu: crate::js::thread_cpu().saturating_sub(start),
        cold: true,
    };
    (result.0, cost, result.1)
}

async fn serve(
    script: &WasmScript,
    host: Option<Arc<dyn Host>>,
    req: Incoming<'_>,
) -> (Result<Answer, Failure>, Duration) {
    let Ok(shared) = shared() else {
        return (
            Err(Failure::Script("wasmtime did not start".into())),
            Duration::ZERO,
        );
    };
    let limits = &script.limits;
    let mut store = Store::new(
        &shared.engine,
        State {
            wasi: WasiCtx::builder().envs(&script.env).build(),
            http: WasiHttpCtx::new(),
            hooks: Outgoing {
                host,
                function: script.name.clone(),
                left: limits.subrequests,
                timeout: Duration::from_millis(limits.wall_ms),
                max_body: limits.request_body_bytes(),
            },
            table: ResourceTable::new(),
            limiter: Limiter {
                memory: limits.memory_bytes() as usize,
                denied: false,
            },
        },
    );
    store.limiter(|s| &mut s.limiter);
    // The CPU limit is this thread's CPU time (the guest runs on it, on a
    // current-thread runtime), looked at on each epoch tick: time the
    // request spends waiting is not charged, as for a script.
    let started = crate::js::thread_cpu();
    let cpu_limit = Duration::from_millis(limits.cpu_ms);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        Ok(
            if crate::js::thread_cpu().saturating_sub(started) > cpu_limit {
                wasmtime::UpdateDeadline::Interrupt
            } else {
                wasmtime::UpdateDeadline::Continue(1)
            },
        )
    });
    let mut b = hyper::Request::builder().method(req.method).uri(req.url);
    for (n, v) in req.headers {
        b = b.header(n.as_str(), v.as_str());
    }
    let body = Full::new(Bytes::from(
        req.body.map(<[u8]>::to_vec).unwrap_or_default(),
    ));
    let Ok(hreq) = b.body(body) else {
        return (
            Err(Failure::Script("the request does not convert".into())),
            Duration::ZERO,
        );
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let prepared = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, hreq)
        .and_then(|r| {
            store
                .data_mut()
                .http()
                .new_response_outparam(tx)
                .map(|o| (r, o))
        });
    let (wreq, out) = match prepared {
        Ok(p) => p,
        Err(e) => return (Err(Failure::Script(format!("{e:#}"))), Duration::ZERO),
    };
    let t = Instant::now();
    let proxy = match script.pre.instantiate_async(&mut store).await {
        Ok(p) => p,
        Err(e) => {
            return (
                Err(Failure::Script(format!("instantiation failed: {e:#}"))),
                t.elapsed(),
            )
        }
    };
    let instantiated = t.elapsed();
    let max_body = limits.response_body_bytes();
    let answer = async move {
        let resp = rx.await;
        let resp = match resp {
            Ok(Ok(r)) => r,
            Ok(Err(code)) => return Err(format!("the component answered an error: {code:?}")),
            Err(_) => return Err("the component never set a response".to_string()),
        };
        let status = resp.status().as_u16();
        let headers = crate::header_pairs(resp.headers());
        let body = http_body_util::Limited::new(resp.into_body(), max_body as usize)
            .collect()
            .await
            .map_err(|e| format!("reading the component's body: {e}"))?
            .to_bytes()
            .to_vec();
        Ok(Answer {
            status,
            headers,
            body,
            streaming: false,
            waiting: false,
        })
    };
    let call = proxy
        .wasi_http_incoming_handler()
        .call_handle(&mut store, wreq, out);
    // The body is read while the handler runs (it may stream it); a trap
    // ends the request at once (the response may never be set).
    let both = async {
        tokio::pin!(call);
        tokio::pin!(answer);
        let mut answered = None;
        loop {
            tokio::select! {
                called = &mut call => {
                    if called.is_err() {
                        return (called, answered.unwrap_or_else(|| Err("the component trapped".to_string())));
                    }
                    // Returned: the response was set by now, or never will be
                    // (its sender stays in the store); its body is whole.
                    let a = match answered {
                        Some(a) => a,
                        None => tokio::time::timeout(Duration::from_secs(1), &mut answer)
                            .await
                            .unwrap_or_else(|_| Err("the component returned without setting a response".to_string())),
                    };
                    return (called, a);
                }
                a = &mut answer, if answered.is_none() => answered = Some(a),
            }
        }
    };
    let Ok((called, answered)) = tokio::time::timeout(limits.wall(), both).await else {
        let limit = if store.data().limiter.denied {
            Limit::Memory
        } else {
            Limit::Wall
        };
        return (Err(Failure::Limit(limit)), instantiated);
    };
    if store.data().limiter.denied {
        return (Err(Failure::Limit(Limit::Memory)), instantiated);
    }
    if let Err(e) = &called {
        if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
            return (Err(Failure::Limit(Limit::Cpu)), instantiated);
        }
    }
    match (answered, called) {
        (Ok(a), _) => (Ok(a), instantiated),
        (Err(why), Err(trap)) => (
            Err(Failure::Script(format!("{why}: {trap:#}"))),
            instantiated,
        ),
        (Err(why), Ok(())) => (Err(Failure::Script(why)), instantiated),
    }
}
