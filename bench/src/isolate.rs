//! `tessera-bench isolate`: what a function's isolate costs, measured in
//! this process with the node's own engine (`tessera_functions::js`), no
//! sockets in between: the script compiled once to bytecode, then requests
//! each in a new isolate (a cold start: runtime, context, the Workers API,
//! the module loaded from bytecode and bound) and in a warm one, and the heap
//! an idle isolate holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_functions::js::{self, Host, Incoming, Script, SubRequest, SubResponse};
use tessera_functions::Limits;

#[derive(clap::Args)]
pub struct IsolateArgs {
    /// The worker script (an ES module), or a WebAssembly component.
    #[arg(long)]
    script: std::path::PathBuf,
    /// Requests of each kind.
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
    /// The path requested.
    #[arg(long, default_value = "/")]
    path: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// No fetch, no KV: the benchmarked scripts use neither.
struct Nothing;

impl Host for Nothing {
    fn fetch(&self, _: &str, _: SubRequest, _: Duration) -> Result<SubResponse, String> {
        Err("no network in this benchmark".into())
    }
    fn kv_get(&self, _: &str, _: &str, _: &str) -> Option<(Vec<u8>, Option<String>)> {
        None
    }
    fn kv_put(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: &[u8],
        _: Option<String>,
        _: u64,
    ) -> Result<(), String> {
        Err("no KV in this benchmark".into())
    }
    fn kv_delete(&self, _: &str, _: &str, _: &str) {}
    fn kv_list(&self, _: &str, _: &str, _: &str, _: usize, _: &str) -> String {
        "{\"keys\":[],\"list_complete\":true}".into()
    }
    fn revalidate(&self, _: &str, _: &str, _: &str) {}
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// A WebAssembly component: compiled once, then a request each in a new
/// instance (from the pooling allocator), timing the instantiation apart.
fn run_wasm(args: &IsolateArgs, bytes: &[u8]) -> anyhow::Result<()> {
    use tessera_functions::wasm;
    let t = Instant::now();
    let component = wasm::WasmScript::compile("bench", 1, bytes, Limits::default(), Vec::new())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let compile_us = t.elapsed().as_secs_f64() * 1e6;
    let url = format!("http://bench.fn.localhost{}", args.path);
    let headers = vec![("user-agent".to_string(), "tessera-bench".to_string())];
    let mut inst = Vec::with_capacity(args.iterations);
    let mut whole = Vec::with_capacity(args.iterations);
    for _ in 0..args.iterations {
        let t = Instant::now();
        let (r, _, instantiation) = wasm::run(
            &component,
            None,
            Incoming {
                method: "GET",
                url: &url,
                headers: &headers,
                body: None,
            },
        );
        whole.push(t.elapsed());
        if let Err(e) = r {
            anyhow::bail!("the component failed: {e:?}");
        }
        inst.push(instantiation);
    }
    inst.sort();
    whole.sort();
    let report = serde_json::json!({
        "compile_us": compile_us,
        "instantiate_p50_us": percentile(&inst, 0.5), "instantiate_p99_us": percentile(&inst, 0.99),
        "request_p50_us": percentile(&whole, 0.5), "request_p99_us": percentile(&whole, 0.99),
    });
    if args.json {
        println!("{report}");
    } else {
        println!("compile (once per node): {compile_us:.0} µs");
        println!(
            "instantiation (pooling allocator, InstancePre): p50 {:.1} µs, p99 {:.1} µs",
            percentile(&inst, 0.5),
            percentile(&inst, 0.99)
        );
        println!(
            "request in a new instance: p50 {:.0} µs, p99 {:.0} µs",
            percentile(&whole, 0.5),
            percentile(&whole, 0.99)
        );
    }
    Ok(())
}

pub fn run(args: IsolateArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.script)?;
    if tessera_functions::wasm::is_wasm(&bytes) {
        return run_wasm(&args, &bytes);
    }
    let source = String::from_utf8(bytes)?;
    let t = Instant::now();
    let script = Arc::new(
        Script::compile("bench", 1, &source, &[], &[], Limits::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let compile_us = t.elapsed().as_secs_f64() * 1e6;
    let host: Arc<dyn Host> = Arc::new(Nothing);
    let url = format!("http://bench.fn.localhost{}", args.path);
    let headers = vec![("user-agent".to_string(), "tessera-bench".to_string())];
    let request = || {
        let (r, cost) = js::run(
            &script,
            &host,
            Incoming {
                method: "GET",
                url: &url,
                headers: &headers,
                body: None,
            },
        );
        if let Err(e) = r {
            panic!("the script failed: {e:?}");
        }
        cost
    };
    let mut cold = Vec::with_capacity(args.iterations);
    for _ in 0..args.iterations {
        js::drop_isolates();
        let t = Instant::now();
        let cost = request();
        cold.push(t.elapsed());
        assert!(cost.cold);
    }
    request();
    let mut warm = Vec::with_capacity(args.iterations);
    for _ in 0..args.iterations {
        let t = Instant::now();
        request();
        warm.push(t.elapsed());
    }
    let heap = js::isolate_memory("bench").unwrap_or(0);
    cold.sort();
    warm.sort();
    let mean =
        |v: &[Duration]| v.iter().map(Duration::as_secs_f64).sum::<f64>() / v.len() as f64 * 1e6;
    let report = serde_json::json!({
        "compile_us": compile_us,
        "cold_mean_us": mean(&cold), "cold_p50_us": percentile(&cold, 0.5), "cold_p99_us": percentile(&cold, 0.99),
        "warm_mean_us": mean(&warm), "warm_p50_us": percentile(&warm, 0.5), "warm_p99_us": percentile(&warm, 0.99),
        "idle_isolate_heap_bytes": heap,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("compile (once per node): {compile_us:.0} µs");
        println!(
            "cold request (new isolate): mean {:.0} µs, p50 {:.0} µs, p99 {:.0} µs",
            mean(&cold),
            percentile(&cold, 0.5),
            percentile(&cold, 0.99)
        );
        println!(
            "warm request: mean {:.1} µs, p50 {:.1} µs, p99 {:.1} µs",
            mean(&warm),
            percentile(&warm, 0.5),
            percentile(&warm, 0.99)
        );
        println!("idle isolate heap: {} KiB", heap / 1024);
    }
    Ok(())
}
