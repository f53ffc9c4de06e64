//! Tessera's edge functions: Workers-style JavaScript modules, deployed by
//! content hash, placed on nodes by the network, run on the service's worker
//! pool under per-request limits and metered for their owner.
//!
//! A function is a deployment of the service `function`. Its spec
//! ([`FunctionSpec`]) names the script's blob (an ES module, one bundled
//! file, whose default export has `fetch(request, env, ctx)`; or a
//! WebAssembly component exporting `wasi:http/incoming-handler`, run by
//! [`wasm`] on wasmtime), its `env`
//! (plain variables, secrets, KV namespaces) and its limits. The node serves
//! it at `{name}.fn.localhost` and at `/fn/{name}/...` (see
//! [`service`]); the script runs in QuickJS with the Workers API (see
//! [`js`]).
//!
//! Goals: the Cloudflare Workers module API as scripts written for it use
//! it (a test runs the same scripts on `workerd` and compares the
//! answers); a request past a limit is stopped and answered `503` naming the
//! limit, and neither the node nor the other functions notice; a cold start
//! costs an isolate, not a parse. Non-goals here: Node.js APIs, Durable
//! Objects, WebSockets in functions.

pub mod js;
pub mod kv;
pub mod service;
pub mod wasm;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use service::{Functions, FunctionsConfig};

/// The largest script (a bundle), as Workers' paid plan allows.
pub const MAX_SCRIPT_BYTES: u64 = 10 << 20;
/// The largest WebAssembly component (one that embeds a language runtime,
/// as componentize-js's do, is some 13 MB).
pub const MAX_COMPONENT_BYTES: u64 = 64 << 20;
/// Variables and secrets per function, and the size of each value.
pub const MAX_VARS: usize = 128;
pub const MAX_VAR_BYTES: usize = 5 << 10;
/// KV namespaces per function.
pub const MAX_KV_NAMESPACES: usize = 16;

/// A limit a request can pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Cpu,
    Wall,
    Memory,
    Stack,
    Subrequests,
    RequestBody,
    ResponseBody,
}

impl Limit {
    /// The limit as the `503` names it.
    pub fn describe(self, limits: &Limits) -> String {
        match self {
            Limit::Cpu => format!("CPU time limit exceeded ({} ms per request)", limits.cpu_ms),
            Limit::Wall => format!(
                "wall time limit exceeded ({} ms per request)",
                limits.wall_ms
            ),
            Limit::Memory => format!("memory limit exceeded ({} MiB)", limits.memory_mb),
            Limit::Stack => "stack limit exceeded (recursion too deep)".to_string(),
            Limit::Subrequests => format!(
                "subrequest limit exceeded ({} per request)",
                limits.subrequests
            ),
            Limit::RequestBody => format!(
                "request body limit exceeded ({} MiB)",
                limits.request_body_mb
            ),
            Limit::ResponseBody => format!(
                "response body limit exceeded ({} MiB)",
                limits.response_body_mb
            ),
        }
    }

    /// Its name in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Cpu => "cpu",
            Limit::Wall => "wall",
            Limit::Memory => "memory",
            Limit::Stack => "stack",
            Limit::Subrequests => "subrequests",
            Limit::RequestBody => "request_body",
            Limit::ResponseBody => "response_body",
        }
    }
}

/// A function's limits, per request, from its spec (defaults as Workers').
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// CPU time: the script's own, not time spent waiting on `fetch` or
    /// timers.
    pub cpu_ms: u64,
    /// Wall time, waiting included.
    pub wall_ms: u64,
    pub memory_mb: u64,
    /// `fetch()` calls.
    pub subrequests: u32,
    pub request_body_mb: u64,
    pub response_body_mb: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_ms: 50,
            wall_ms: 30_000,
            memory_mb: 128,
            subrequests: 50,
            request_body_mb: 100,
            response_body_mb: 100,
        }
    }
}

impl Limits {
    pub fn cpu(&self) -> Duration {
        Duration::from_millis(self.cpu_ms)
    }
    pub fn wall(&self) -> Duration {
        Duration::from_millis(self.wall_ms)
    }
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mb << 20
    }
    /// QuickJS's stack bound: well inside a worker thread's stack.
    pub fn stack_bytes(&self) -> usize {
        512 << 10
    }
    pub fn request_body_bytes(&self) -> u64 {
        self.request_body_mb << 20
    }
    pub fn response_body_bytes(&self) -> u64 {
        self.response_body_mb << 20
    }

    fn check(&self) -> Result<(), String> {
        let within = |what: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Err(format!("limits.{what} = {v}: between {lo} and {hi}"))
            } else {
                Ok(())
            }
        };
        within("cpu_ms", self.cpu_ms, 1, 30_000)?;
        within("wall_ms", self.wall_ms, 1, 300_000)?;
        within("memory_mb", self.memory_mb, 8, 1024)?;
        within("subrequests", u64::from(self.subrequests), 0, 1000)?;
        within("request_body_mb", self.request_body_mb, 1, 500)?;
        within("response_body_mb", self.response_body_mb, 1, 500)
    }
}

/// A function's deployment spec (TOML or JSON).
///
/// ```toml
/// code = "<BLAKE3 of the script, 64 hex>"
/// [vars]
/// GREETING = "hello"
/// [secrets]
/// API_KEY = "..."
/// kv = ["CACHE"]
/// [limits]
/// cpu_ms = 50
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// The script's blob (an ES module).
    pub code: String,
    /// `js` (the default): an ES module; `wasm`: a WebAssembly component
    /// exporting `wasi:http/incoming-handler`.
    #[serde(default = "js_kind")]
    pub kind: String,
    /// Plain-text bindings, `env.NAME`.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Bindings like vars that `tessera deployments` does not print. They
    /// are in the spec, so every node that can read the deployments can
    /// read them: not yet encrypted to the placed nodes.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// KV namespace bindings, `env.NAME.get(...)`.
    #[serde(default)]
    pub kv: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
}

fn js_kind() -> String {
    "js".into()
}

fn binding_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        && !n.as_bytes()[0].is_ascii_digit()
}

impl FunctionSpec {
    /// Parses and checks a spec; Err says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<FunctionSpec, String> {
        let spec: FunctionSpec = service_api::parse_spec(bytes)?;
        spec.check()?;
        Ok(spec)
    }

    pub fn check(&self) -> Result<(), String> {
        if parse_hex32(&self.code).is_none() {
            return Err("code: the script's BLAKE3 hash, 64 hex digits".into());
        }
        if self.kind != "js" && self.kind != "wasm" {
            return Err(format!(
                "kind = {:?}: \"js\" (an ES module) or \"wasm\" (a wasi-http component)",
                self.kind
            ));
        }
        if self.kind == "wasm" && !self.kv.is_empty() {
            return Err("kv: KV namespaces are for JavaScript functions".into());
        }
        if self.vars.len() + self.secrets.len() > MAX_VARS {
            return Err(format!("at most {MAX_VARS} vars and secrets"));
        }
        if self.kv.len() > MAX_KV_NAMESPACES {
            return Err(format!("at most {MAX_KV_NAMESPACES} KV namespaces"));
        }
        let mut seen = std::collections::HashSet::new();
        for (name, value) in self.vars.iter().chain(self.secrets.iter()) {
            if !binding_name(name) {
                return Err(format!("binding {name:?}: a JavaScript identifier"));
            }
            if value.len() > MAX_VAR_BYTES {
                return Err(format!("binding {name}: at most {MAX_VAR_BYTES} bytes"));
            }
            if !seen.insert(name.as_str()) {
                return Err(format!("binding {name} is given twice"));
            }
        }
        for name in &self.kv {
            if !binding_name(name) {
                return Err(format!("KV binding {name:?}: a JavaScript identifier"));
            }
            if !seen.insert(name.as_str()) {
                return Err(format!("binding {name} is given twice"));
            }
        }
        self.limits.check()
    }

    /// The script's hash.
    pub fn code_hash(&self) -> [u8; 32] {
        parse_hex32(&self.code).unwrap_or([0; 32])
    }

    /// Vars then secrets, as the script's `env` sees them.
    pub fn bindings(&self) -> Vec<(String, String)> {
        self.vars
            .iter()
            .chain(self.secrets.iter())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Checks that `source` is a script this node can run: UTF-8, within
/// [`MAX_SCRIPT_BYTES`], and a module that compiles. Err: why not (a syntax
/// error names its line).
pub fn check_script(name: &str, source: &[u8]) -> Result<(), String> {
    if wasm::is_wasm(source) {
        if source.len() as u64 > MAX_COMPONENT_BYTES {
            return Err(format!(
                "the component is {} bytes; at most {MAX_COMPONENT_BYTES}",
                source.len()
            ));
        }
        return wasm::WasmScript::compile(name, 0, source, Limits::default(), Vec::new())
            .map(|_| ());
    }
    if source.len() as u64 > MAX_SCRIPT_BYTES {
        return Err(format!(
            "the script is {} bytes; at most {MAX_SCRIPT_BYTES}",
            source.len()
        ));
    }
    let text = std::str::from_utf8(source).map_err(|_| "the script is not UTF-8".to_string())?;
    js::Script::compile(name, 0, text, &[], &[], Limits::default()).map(|_| ())
}

/// Billing units: the ledger meters one unit per byte served; a function's
/// compute is converted at this rate (a CPU-millisecond costs as much as
/// 16 KiB served, a request as much as 1 KiB).
pub const UNITS_PER_CPU_MS: u64 = 16 << 10;
pub const UNITS_PER_REQUEST: u64 = 1 << 10;

/// An upstream's headers (a subrequest's, a component's answer) as the
/// engines pass them on: names as they are, values as text.
pub(crate) fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

pub fn hex(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(HEX[(x >> 4) as usize] as char);
        s.push(HEX[(x & 15) as usize] as char);
    }
    s
}

pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let d = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[i] = d(pair[0])? << 4 | d(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked() {
        let code = "ab".repeat(32);
        let ok = format!("code = \"{code}\"\nkv = [\"CACHE\"]\n[vars]\nGREETING = \"hi\"\n");
        let spec = FunctionSpec::parse(ok.as_bytes()).expect("valid");
        assert_eq!(spec.limits, Limits::default());
        assert_eq!(spec.kv, vec!["CACHE".to_string()]);
        for (bad, why) in [
            ("code = \"xyz\"".to_string(), "64 hex"),
            (format!("code = \"{code}\"\nkind = \"python\""), "wasi-http"),
            (
                format!("code = \"{code}\"\n[vars]\n\"a-b\" = \"x\""),
                "identifier",
            ),
            (
                format!("code = \"{code}\"\nkv = [\"X\"]\n[vars]\nX = \"1\""),
                "twice",
            ),
            (format!("code = \"{code}\"\n[limits]\ncpu_ms = 0"), "cpu_ms"),
            (
                format!("code = \"{code}\"\n[limits]\nmemory_mb = 100000"),
                "memory_mb",
            ),
            (format!("code = \"{code}\"\nextra = 1"), "unknown field"),
        ] {
            let e = FunctionSpec::parse(bad.as_bytes()).expect_err(&bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn scripts_that_do_not_compile_are_refused_with_the_line() {
        check_script(
            "ok",
            b"export default { fetch() { return new Response('x') } }",
        )
        .expect("ok");
        let e = check_script("bad", b"export default {\n fetch( {\n}").expect_err("syntax");
        assert!(e.contains("SyntaxError"), "{e}");
        assert!(e.contains("bad.js:"), "{e}");
        assert!(check_script("bin", &[0xff, 0xfe]).is_err());
    }
}
