#!/usr/bin/env bash
# Every performance target in one run, side by side with its peer, and a table
# that says which are met:
#
#   - verified decode / raw blake3::hash (in memory and from a reader), ingest /
#     raw hash (one core, 256 MiB)
#   - the verified-stream GET / the plain GET of 1 MiB, GB/s (one core)
#   - HTTP/1.1 4 KiB: Tessera / nginx req/s and server CPU per request
#   - HTTP/3 1 MiB: GB per server CPU-second (one core, and many)
#   - HTTP/3 4 KiB server CPU per request, many cores / one, at the same
#     offered load per core (bench/h3-cpu-curve.sh)
#   - 1,000 and 10,000 idle HTTP/1.1 keep-alive connections held: p99 and bytes
#     per connection against nginx (bench/idle-connections.sh)
#   - 5,000 QUIC connections held: bytes per connection against Caddy
#     (bench/idle-quic.sh)
#
#   bench/limits.sh              (about 12 minutes; DURATION=4 s per run)
#
# "Many cores" is 8 with the load generators on CPUs 8-15 where the machine has
# 16 CPUs or more. On a smaller machine it is every CPU, with the load generator
# on the same CPUs: server CPU per request and the ratios still hold there, the
# req/s do not (the table says so). Writes bench/out/limits/ (limits.json, the
# suite's plots of latency and CPU against offered load, and the raw output).
# Needs what bench/quick.sh needs: nginx, Caddy, python3, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/out/limits
rm -rf "$out"
mkdir -p "$out"
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked -q -p tessera -p tessera-bench
cargo bench --locked -q -p tessera-bench --bench verify --no-run 2>/dev/null
export TESSERA_BIN=${TESSERA_BIN:-$target/release/tessera}
export TESSERA_BENCH_BIN=${TESSERA_BENCH_BIN:-$target/release/tessera-bench}
duration=${DURATION:-4}
cpus=$(nproc)
if ((cpus >= 16)); then
    many=8 many_load=8-15 shared=0
else
    many=$cpus many_load=0-$((cpus - 1)) shared=1
fi
{
    date -u +%FT%TZ
    uname -r
    echo "cpus $cpus"
    grep -m1 'model name' /proc/cpuinfo
    echo "many cores: $many, load on CPUs $many_load"
} | tee "$out/machine.txt"

echo "== verification and ingest (one core)"
RATIOS_ONLY=1 RATIO_ROUNDS=${RATIO_ROUNDS:-15} taskset -c 0 \
    cargo bench --locked -q -p tessera-bench --bench verify 2>/dev/null | tee "$out/verify.txt"
# One run with the open-loop latency runs (the plots), then two of the peaks
# alone: a peak on a shared VM moves by a fifth from run to run, so the table
# takes the median of three.
only=4k,1m,verified-1m,verified-checked-1m,h3-4k,h3-1m
echo "== suite, one core"
"$TESSERA_BENCH_BIN" suite --cores 1 --only "$only" \
    --h3 --duration "$duration" --warmup 1 --out "$out/suite-1" | tee "$out/suite-1.txt"
for round in 2 3; do
    echo "== suite, one core, peaks (round $round of 3)"
    "$TESSERA_BENCH_BIN" suite --cores 1 --only "$only" --h3 --peaks-only \
        --duration "$duration" --warmup 1 --out "$out/suite-1-$round" | tee "$out/suite-1-$round.txt"
done
echo "== suite, $many cores (peaks)"
"$TESSERA_BENCH_BIN" suite --cores "$many" --load-cpus "$many_load" --connections $((64 * many)) \
    --only 4k,h3-1m --h3 --peaks-only --duration "$duration" --warmup 1 \
    --out "$out/suite-$many" | tee "$out/suite-many.txt"
cp "$out/suite-$many/suite.json" "$out/suite-many.json"
echo "== HTTP/3 CPU per request at the same load per core, 1 and $many cores"
CORES="1 $many" LOAD_CPUS=$many_load PER_CORE_RATES="2500 5000 10000" \
    bench/h3-cpu-curve.sh "$TESSERA_BIN" 2>&1 | grep -v WARN | tee "$out/h3-cpu-curve.txt"
echo "== idle keep-alive connections"
bench/idle-connections.sh 1000 10000 | tee "$out/idle-connections.txt"
cp bench/out/idle-connections.json "$out/"
echo "== QUIC connections held"
bench/idle-quic.sh 5000 | tee "$out/idle-quic.txt"
cp bench/out/idle-quic.json "$out/"

python3 - "$out" "$many" "$shared" <<'PY'
import json, re, sys
out, many, shared = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
verify = open(f"{out}/verify.txt").read()
def ratio(name):
    return float(re.search(name + r" = ([\d.]+)", verify).group(1))
from statistics import median
# Each figure from the one-core suite is the median of its value in the three runs.
one = [json.load(open(f"{out}/{d}/suite.json"))["results"] for d in ("suite-1", "suite-1-2", "suite-1-3")]
multi = [json.load(open(f"{out}/suite-many.json"))["results"]]
def get(results, server, workload):
    return next(r for r in results if r["server"] == server and r["workload"] == workload)
def med(runs, f):
    return median(f(r) for r in runs)
def cpu_ratio(runs, w):
    return med(runs, lambda r: get(r, "tessera", w)["cpu_seconds_per_million_requests"]
               / get(r, "nginx", w)["cpu_seconds_per_million_requests"])
def rps_ratio(runs, w):
    return med(runs, lambda r: get(r, "tessera", w)["peak"]["rps"] / get(r, "nginx", w)["peak"]["rps"])
def gb_per_cpu(runs):
    return med(runs, lambda r: 1 / max(get(r, "tessera", "h3-1m")["cpu_seconds_per_gb"], 1e-9))
def over_plain(runs, w):
    return med(runs, lambda r: get(r, "tessera", w)["peak"]["gbytes_per_s"]
               / get(r, "tessera", "1m")["peak"]["gbytes_per_s"])
# h3-cpu-curve lines: cores=N ... offered=R ... server_us_per_req=U
curve = {}
for line in open(f"{out}/h3-cpu-curve.txt"):
    m = re.search(r"cores=(\d+)\s+conns=(\d+)\s+offered=(\d+)\s.*server_us_per_req=([\d.]+)", line)
    if m and int(m.group(2)) == 32 * int(m.group(1)):
        cores, rate, us = int(m.group(1)), int(m.group(3)), float(m.group(4))
        curve[(cores, rate // cores)] = us
scaling = {r: curve[(many, r)] / curve[(1, r)] for (c, r) in curve if c == 1 and (many, r) in curve}
idle = json.load(open(f"{out}/idle-connections.json"))["rows"]
def idle_row(server, n):
    return next(r for r in idle if r["server"] == server and r["connections"] == n)
quic = json.load(open(f"{out}/idle-quic.json"))["rows"]
def quic_row(server):
    return next((r for r in quic if r["server"] == server and r["connections"] == 5000), None)
where = f"{many} cores" + (", load on the same CPUs" if shared else "")
rows = []
def row(name, value, target, ok, shown=None):
    # ok None: a figure reported beside the targets, with none of its own.
    rows.append({"metric": name, "value": value, "target": target, "met": ok})
    verdict = "-" if ok is None else "met" if ok else "NOT met"
    print(f"| {name} | {shown if shown is not None else f'{value:.3f}'} | {target} | {verdict} |")
print("| metric | measured | target | |")
print("| --- | ---: | --- | --- |")
v = ratio("ratio verified/raw")
row("verified decode in memory / raw blake3::hash, 1 core", v, ">= 0.95", v >= 0.95)
v = ratio("ingest/raw")
row("ingest / raw hash, 1 core", v, ">= 0.9", v >= 0.9)
v = ratio("from a reader/raw")
row("verified decode from a reader / raw blake3::hash, 1 core", v, ">= 0.95", v >= 0.95)
v = over_plain(one, "verified-1m")
row("verified-stream GET (kept copy) / plain GET, 1 MiB, 1 core", v, ">= 0.9", v >= 0.9)
v = over_plain(one, "verified-checked-1m")
row("verified-stream GET (checked as sent) / plain GET, 1 MiB, 1 core", v, ">= 0.9", v >= 0.9)
for rate, v in sorted(scaling.items()):
    row(f"HTTP/3 CPU per 4 KiB request, {many} / 1 cores, {rate} req/s per core ({where})",
        v, "<= 1.25", v <= 1.25)
v = gb_per_cpu(one)
row("HTTP/3 1 MiB, GB per server CPU-second, 1 core", v, ">= 1.0", v >= 1.0)
v = gb_per_cpu(multi)
row(f"HTTP/3 1 MiB, GB per server CPU-second, {where}", v, ">= 0.8", v >= 0.8)
v = rps_ratio(one, "4k")
row("HTTP/1.1 4 KiB req/s, Tessera / nginx, 1 core", v, ">= 2.0", v >= 2.0)
v = cpu_ratio(one, "4k")
row("HTTP/1.1 4 KiB CPU per request, Tessera / nginx, 1 core", v, "<= 0.5", v <= 0.5)
v = rps_ratio(multi, "4k")
row(f"HTTP/1.1 4 KiB req/s, Tessera / nginx, {where}", v, ">= 2.0", v >= 2.0)
v = cpu_ratio(multi, "4k")
row(f"HTTP/1.1 4 KiB CPU per request, Tessera / nginx, {where}", v, "<= 0.5", v <= 0.5)
# The target is at 10,000 (per-connection memory); at 1,000 the core's fixed
# memory still weighs, so that row is reported.
for n in (1000, 10000):
    t, g = idle_row("tessera", n), idle_row("nginx", n)
    v = t["bytes_per_connection"] / max(1, g["bytes_per_connection"])
    row(f"idle keep-alive connections, {n:,} held: bytes each, Tessera / nginx", v,
        "<= 1.0" if n == 10000 else "reported", v <= 1.0 if n == 10000 else None,
        f"{t['bytes_per_connection']:,} / {g['bytes_per_connection']:,} B = {v:.2f}; p99 {t['p99_ms']} ms (nginx {g['p99_ms']})")
t, c = quic_row("tessera"), quic_row("caddy")
if t:
    peer = f"; Caddy {c['bytes_per_connection']:,} B, p99 {c['p99_ms']} ms" if c else "; no Caddy"
    row("QUIC connections, 5,000 held", t["bytes_per_connection"], "held, memory reported", t["errors"] == 0,
        f"{t['bytes_per_connection']:,} B each, p99 {t['p99_ms']} ms, {t['errors']} errors{peer}")
json.dump({"many_cores": many, "load_shared": shared, "rows": rows}, open(f"{out}/limits.json", "w"), indent=1)
print(f"wrote {out}/limits.json")
PY
