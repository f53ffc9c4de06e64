#!/usr/bin/env bash
# HTTP/3 server CPU per 4 KiB request against the offered load and against the
# connections held, for one or more tessera binaries run one after another
# (an A/B of a change in one run: pass the build before and this one).
#
#   bench/h3-cpu-curve.sh [BIN ...]     (default: this checkout's release build)
#   CORES="1 8" LOAD_CPUS=8-15 bench/h3-cpu-curve.sh   (the same load per core
#                                                      on 1 and on 8 cores)
#
# Each binary serves on CORES cores (CPUs 0..N-1; default 1) from a fresh data
# dir; tessera-bench loads it from LOAD_CPUS (default CPU 1) over HTTP/3 (GRO
# receive). Per server core: 32 connections x 2 streams at each rate of
# PER_CORE_RATES (default 5000 20000 req/s) and closed loop, then 1,000
# connections x 1 stream at 2,000 req/s (most of them idle at any moment). The
# CPU per request of N cores against 1 core at the same rate per core is the
# fair core-scaling figure. Per run it prints
# the server's CPU time per request (utime + stime from /proc over 2 s, after
# the connections are up), and datagrams received and sent per request (the
# node's metrics). Server CPU per request is the figure to compare: on a 2-vCPU
# machine the closed-loop req/s may be the load generator's limit.
#
# Why the curve matters: a server that is not saturated wakes up for every
# request or two, so a request costs several times what it costs at the peak
# (the same holds for Caddy; see the suite's open-loop rows). Comparing CPU per
# request between core counts is only fair at the same load per core.
# Needs: curl, python3, taskset; builds the release binaries unless given.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
bins=("$@")
if ((${#bins[@]} == 0)); then
    cargo build --release --locked -q -p tessera -p tessera-bench
    bins=("$target/release/tessera")
fi
bench=${TESSERA_BENCH_BIN:-$target/release/tessera-bench}
[ -x "$bench" ] || cargo build --release --locked -q -p tessera-bench
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d /tmp/tessera-h3-curve.XXXXXX)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
head -c 4096 /dev/urandom >"$work/4k.bin"
port=18611
hz=$(getconf CLK_TCK)
metric() { curl -s "http://127.0.0.1:$port/metrics" | awk -v k="$1" '$1 == k {print $2}'; }
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }

# one BIN CONNS STREAMS RATE WARMUP (RATE 0: closed loop)
one() {
    local bin=$1 conns=$2 streams=$3 rate=$4 warm=$5 flag=() c0 q0 r0 t0 c1 q1 r1 t1 lp
    ((rate > 0)) && flag=(--rate "$rate")
    "$bench" load --h3 --addr "127.0.0.1:$port" --path "/blobs/$hash" \
        --connections "$conns" --streams "$streams" --cpus "$load_cpus" --threads "$threads" \
        --duration 2 --warmup "$warm" --timeout 30 "${flag[@]}" >"$work/load.out" 2>&1 &
    lp=$!
    sleep "$warm"
    c0=$(cpu) q0=$(metric tessera_h3_requests_total)
    r0=$(metric tessera_h3_datagrams_received_total) t0=$(metric tessera_h3_datagrams_sent_total)
    sleep 2
    c1=$(cpu) q1=$(metric tessera_h3_requests_total)
    r1=$(metric tessera_h3_datagrams_received_total) t1=$(metric tessera_h3_datagrams_sent_total)
    wait "$lp" || true
    python3 -c "
q = $q1 - $q0
c = ($c1 - $c0) / $hz
print(f'{\"$(basename "$(dirname "$(dirname "$bin")")")\":<22} cores={$cores:<2} conns={$conns:<5} offered={\"closed\" if $rate == 0 else $rate:<7} req/s={q / 2:<8.0f} server_us_per_req={c / max(q, 1) * 1e6:<7.1f} rx/req={($r1 - $r0) / max(q, 1):.2f} tx/req={($t1 - $t0) / max(q, 1):.2f}')"
}

load_cpus=${LOAD_CPUS:-1}
# One load thread per load CPU (at most 8), as the suite does.
threads=$(python3 -c "
n = 0
for part in '$load_cpus'.split(','):
    a, _, b = part.partition('-')
    n += int(b or a) - int(a) + 1
print(min(n, 8))")
for cores in ${CORES:-1}; do
    for bin in "${bins[@]}"; do
        rm -rf "$work/data"
        printf 'h3_max_connections_per_core = 4096\n' >"$work/tessera.toml"
        taskset -c "0-$((cores - 1))" "$bin" run --config "$work/tessera.toml" --cores "$cores" \
            --listen "127.0.0.1:$port" --data-dir "$work/data" 2>"$work/tessera.log" &
        pid=$!
        for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
        hash=$(TESSERA_CLIENT_DIR="$work/client" "$bin" put "$work/4k.bin" --node "http://127.0.0.1:$port" | awk '{print $1}')
        for rate in ${PER_CORE_RATES:-5000 20000} 0; do
            one "$bin" $((32 * cores)) 2 $((rate * cores)) 1
        done
        one "$bin" $((1000 * cores)) 1 $((2000 * cores)) 5
        kill "$pid"
        wait "$pid" 2>/dev/null || true
        pid=""
    done
done
