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
/// secret_names = ["API_KEY"]
/// kv = ["CACHE"]
/// [sealed_secrets]
/// "<node id>" = "<the secrets, sealed to that node, hex>"
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
    /// Secret bindings in plain text: refused in a spec (anyone who reads
    /// the deployments could read them). `tessera deploy function` takes
    /// them from `--secret` or a spec file's `[secrets]` and seals them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// The secret bindings' names (their values are sealed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_names: Vec<String>,
    /// Node id (hex) → the secrets as a JSON object (name → value), sealed
    /// to that node: `crypto_box_seal` (an ephemeral X25519 key,
    /// XSalsa20-Poly1305) to the X25519 form of its ed25519 key, in hex.
    /// One box per node that was a member when the function was deployed;
    /// only that node opens it, and the ledger, the spec's readers and the
    /// deployments listing see the names only. A node that joined later asks a
    /// member for a box of its own (`GET /fn/_secrets/{name}`, signed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sealed_secrets: BTreeMap<String, String>,
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
        if !self.secrets.is_empty() {
            return Err("secrets: a spec carries no secret in plain text (anyone who reads the deployments could read it); deploy with --secret NAME=VALUE, which seals them to the network's nodes".into());
        }
        if self.vars.len() + self.secret_names.len() > MAX_VARS {
            return Err(format!("at most {MAX_VARS} vars and secrets"));
        }
        if self.secret_names.is_empty() != self.sealed_secrets.is_empty() {
            return Err("secret_names and sealed_secrets: both or neither".into());
        }
        if self.sealed_secrets.len() > MAX_SEALED_TO {
            return Err(format!("sealed_secrets: at most {MAX_SEALED_TO} nodes"));
        }
        for (node, sealed) in &self.sealed_secrets {
            if parse_hex32(node).is_none() {
                return Err(format!("sealed_secrets: {node:?} is not a node id"));
            }
            if sealed.len() > 2 * MAX_SEALED_BYTES || unhex(sealed).is_none() {
                return Err(format!(
                    "sealed_secrets.{node}: a sealed box in hex, at most {MAX_SEALED_BYTES} bytes"
                ));
            }
        }
        if self.kv.len() > MAX_KV_NAMESPACES {
            return Err(format!("at most {MAX_KV_NAMESPACES} KV namespaces"));
        }
        let mut seen = std::collections::HashSet::new();
        for (name, value) in &self.vars {
            if value.len() > MAX_VAR_BYTES {
                return Err(format!("binding {name}: at most {MAX_VAR_BYTES} bytes"));
            }
        }
        for name in self.vars.keys().chain(&self.secret_names) {
            if !binding_name(name) {
                return Err(format!("binding {name:?}: a JavaScript identifier"));
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

    /// Vars then `secrets` (opened with [`FunctionSpec::open_secrets`]), as
    /// the script's `env` sees them.
    pub fn bindings(&self, secrets: &BTreeMap<String, String>) -> Vec<(String, String)> {
        self.vars
            .iter()
            .chain(secrets.iter())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Seals `secrets` to each of `nodes` (id hex, and a sealer for it) and
    /// records them in the spec; their names go in `secret_names`.
    pub fn seal_secrets(
        &mut self,
        secrets: &BTreeMap<String, String>,
        nodes: &[String],
        seal: impl Fn(&str, &[u8]) -> Result<Vec<u8>, String>,
    ) -> Result<(), String> {
        self.secrets.clear();
        self.secret_names = secrets.keys().cloned().collect();
        self.sealed_secrets.clear();
        if secrets.is_empty() {
            return Ok(());
        }
        let plain = serde_json::to_vec(secrets).map_err(|e| e.to_string())?;
        for node in nodes {
            self.sealed_secrets
                .insert(node.clone(), hex(&seal(node, &plain)?));
        }
        Ok(())
    }

    /// The secrets from a box sealed to this node (its contents checked
    /// against `secret_names`); Err: why they cannot be had.
    pub fn open_sealed(
        &self,
        sealed: &[u8],
        unseal: impl Fn(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<BTreeMap<String, String>, String> {
        let plain = unseal(sealed).ok_or("the secrets' box does not open with this node's key")?;
        let secrets: BTreeMap<String, String> =
            serde_json::from_slice(&plain).map_err(|e| format!("the sealed secrets: {e}"))?;
        if !secrets.keys().eq(self
            .secret_names
            .iter()
            .collect::<std::collections::BTreeSet<_>>())
        {
            return Err("the sealed secrets are not the ones the spec names".into());
        }
        if let Some((name, _)) = secrets.iter().find(|(_, v)| v.len() > MAX_VAR_BYTES) {
            return Err(format!("secret {name}: at most {MAX_VAR_BYTES} bytes"));
        }
        Ok(secrets)
    }

    /// This node's sealed box, if the deployer sealed one to it.
    pub fn sealed_for(&self, node_id: &str) -> Option<Vec<u8>> {
        unhex(self.sealed_secrets.get(node_id)?)
    }
}

/// Most nodes a spec seals its secrets to (a spec is at most 64 KiB: one
/// box is a hundred or so bytes in hex for a few short secrets).
pub const MAX_SEALED_TO: usize = 1024;
/// Largest sealed box.
pub const MAX_SEALED_BYTES: usize = 64 << 10;

/// Bytes from hex; None if it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
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
            (
                format!("code = \"{code}\"\n[secrets]\nAPI_KEY = \"plain\""),
                "plain text",
            ),
            (
                format!("code = \"{code}\"\nsecret_names = [\"K\"]"),
                "both or neither",
            ),
            (
                format!(
                    "code = \"{code}\"\nsecret_names = [\"K\"]\n[sealed_secrets]\nnode = \"00\""
                ),
                "not a node id",
            ),
            (
                format!(
                    "code = \"{code}\"\nsecret_names = [\"K\"]\n[sealed_secrets]\n{code} = \"zz\""
                ),
                "hex",
            ),
        ] {
            let e = FunctionSpec::parse(bad.as_bytes()).expect_err(&bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn sealed_secrets_open_only_as_the_spec_names_them() {
        let code = "ab".repeat(32);
        let mut spec = FunctionSpec::parse(format!("code = \"{code}\"").as_bytes()).expect("spec");
        let secrets: BTreeMap<String, String> = [("API_KEY".to_string(), "v".to_string())].into();
        // A stand-in "seal" (reversal) keeps this test about the spec.
        let node = "cd".repeat(32);
        spec.seal_secrets(&secrets, std::slice::from_ref(&node), |_, p| {
            Ok(p.iter().rev().copied().collect())
        })
        .expect("seal");
        let text = service_api::toml::to_string(&spec).expect("toml");
        assert!(!text.contains("\"v\""), "{text}");
        let spec = FunctionSpec::parse(text.as_bytes()).expect("sealed spec");
        let unseal = |b: &[u8]| Some(b.iter().rev().copied().collect());
        let sealed = spec.sealed_for(&node).expect("a box for the node");
        assert_eq!(spec.open_sealed(&sealed, unseal).expect("open"), secrets);
        assert!(spec.sealed_for(&"ef".repeat(32)).is_none());
        assert!(spec.open_sealed(&sealed, |_| None).is_err());
        // A box with other names than the spec's is refused.
        let other = br#"{"OTHER":"v"}"#.iter().rev().copied().collect::<Vec<u8>>();
        assert!(spec
            .open_sealed(&other, unseal)
            .expect_err("other names")
            .contains("not the ones"));
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
