#!/usr/bin/env bash
# The quick regression guard: in about 30 seconds (after the build), the ratios
# that say whether a change lost ground, each measured side by side in this run:
#
#   - verified decode / raw blake3::hash and ingest / raw hash, one core, 256 MiB
#   - HTTP/1.1 4 KiB and 1 MiB: Tessera / nginx req/s and server CPU per request
#   - Tessera's verified-stream GET / its plain GET of 1 MiB, GB/s: the kept
#     copy (spliced) and the stream checked as it is sent (asked for as a range)
#   - memory per idle keep-alive connection at 1,000 connections, Tessera / nginx
#   - HTTP/3 1 MiB: Tessera / Caddy GB/s, and Tessera's GB per server CPU-second
#
#   bench/quick.sh            (servers on CPU 0, load on the others)
#
# Prints one line per ratio and writes bench/out/quick.json. A ratio 20% below
# the figures in bench/RESULTS.md means the change lost ground: say so.
# Needs: nginx (nginx-light), Caddy (for the HTTP/3 row), python3, curl. Builds
# the release binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
out=bench/out
mkdir -p "$out"
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked -q -p tessera -p tessera-bench
cargo bench --locked -q -p tessera-bench --bench verify --no-run 2>/dev/null
export TESSERA_BIN=${TESSERA_BIN:-$target/release/tessera}
started=$(date +%s.%N)

RATIOS_ONLY=1 taskset -c 0 cargo bench --locked -q -p tessera-bench --bench verify 2>/dev/null |
    tee "$out/quick-verify.txt" | grep ratio
"$target/release/tessera-bench" suite --cores 1 --only 4k,1m,verified-1m,verified-checked-1m,h3-1m \
    --h3 --duration 1 --warmup 0.5 --peaks-only --out "$out/quick-suite" >"$out/quick-suite.txt"
# One second idle is enough for spare buffers to go (they are freed after half
# a second unused): the guard stays near 30 s.
IDLE_SETTLE_S=1 bench/idle-connections.sh 1000 >"$out/quick-idle.txt"
cp bench/out/idle-connections.json "$out/quick-idle.json"

python3 - "$out" "$started" <<'PY'
import json, re, sys, time
out, started = sys.argv[1], float(sys.argv[2])
verify = open(f"{out}/quick-verify.txt").read()
m = re.search(r"ratio verified/raw = ([\d.]+).*ingest/raw = ([\d.]+)", verify)
suite = json.load(open(f"{out}/quick-suite/suite.json"))["results"]
def get(server, workload):
    return next(r for r in suite if r["server"] == server and r["workload"] == workload)
rows = {"verified_decode_over_raw_hash": float(m.group(1)), "ingest_over_raw_hash": float(m.group(2))}
rows["verified_decode_from_a_reader_over_raw_hash"] = float(re.search(r"from a reader/raw = ([\d.]+)", verify).group(1))
for w in ("4k", "1m"):
    t, n = get("tessera", w), get("nginx", w)
    rows[f"http1_{w}_rps_tessera_over_nginx"] = t["peak"]["rps"] / n["peak"]["rps"]
    tc, nc = t["cpu_seconds_per_million_requests"], n["cpu_seconds_per_million_requests"]
    rows[f"http1_{w}_cpu_per_request_tessera_over_nginx"] = tc / nc if nc else 0
plain = get("tessera", "1m")["peak"]["gbytes_per_s"]
rows["verified_1m_over_plain_1m_gbps"] = get("tessera", "verified-1m")["peak"]["gbytes_per_s"] / plain
rows["verified_checked_1m_over_plain_1m_gbps"] = get("tessera", "verified-checked-1m")["peak"]["gbytes_per_s"] / plain
h3 = get("tessera", "h3-1m")
rows["http3_1m_gbps_tessera_over_caddy"] = h3["peak"]["gbytes_per_s"] / get("caddy", "h3-1m")["peak"]["gbytes_per_s"]
rows["http3_1m_gb_per_server_cpu_second_tessera"] = 1 / h3["cpu_seconds_per_gb"] if h3["cpu_seconds_per_gb"] else 0
idle = {r["server"]: r for r in json.load(open(f"{out}/quick-idle.json"))["rows"]}
rows["idle_bytes_per_connection_tessera"] = idle["tessera"]["bytes_per_connection"]
rows["idle_bytes_per_connection_nginx"] = idle["nginx"]["bytes_per_connection"]
rows["idle_bytes_per_connection_tessera_over_nginx"] = idle["tessera"]["bytes_per_connection"] / max(1, idle["nginx"]["bytes_per_connection"])
for k, v in rows.items():
    print(f"{k:50} {v:10.3f}" if isinstance(v, float) else f"{k:50} {v:10}")
rows["seconds"] = round(time.time() - started, 1)
print(f"{'seconds (after the build)':50} {rows['seconds']:10}")
json.dump(rows, open(f"{out}/quick.json", "w"), indent=1)
PY
