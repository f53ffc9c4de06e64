#!/usr/bin/env bash
# Two tessera binaries side by side, interleaved: a change measured against the
# build before it on the same machine in the same run.
#
#   bench/compare-binaries.sh OLD_BIN NEW_BIN [ROUNDS=3] [SECONDS=8]
#
# Each round starts OLD then NEW on one core (CPU 0) with a fresh data dir,
# uploads a 4 KiB and a 1 MiB blob, and loads each with wrk (-t1 -c32, pinned
# to CPU 1), printing req/s and the server's CPU time per request (utime +
# stime from /proc, in µs). Take medians; on a shared VM single runs swing.
# Needs: wrk, curl, python3, taskset. Build OLD in its own CARGO_TARGET_DIR: an
# older checkout built into the same one overwrites the current build's artifacts
# and a later `cargo build` may call them fresh.
set -euo pipefail
OLD=${1:?old binary} NEW=${2:?new binary} ROUNDS=${3:-3} SECS=${4:-8}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -c 4096 /dev/urandom >"$work/4k"
head -c 1048576 /dev/urandom >"$work/1m"
hz=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
put() { curl -s --data-binary @"$1" "http://127.0.0.1:$2/blobs" | python3 -c "import json,sys;print(json.load(sys.stdin)['hash'])"; }
run() { # bin port label
    local d pid
    d=$(mktemp -d -p "$work")
    taskset -c 0 "$1" run --data-dir "$d" --listen "127.0.0.1:$2" --cores 1 >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 200); do curl -sf "http://127.0.0.1:$2/healthz" >/dev/null && break; sleep 0.1; done
    for size in 4k 1m; do
        local h c0 c1 out rps reqs
        h=$(put "$work/$size" "$2")
        c0=$(cpu $pid)
        out=$(taskset -c 1 wrk -t1 -c32 -d"${SECS}s" "http://127.0.0.1:$2/blobs/$h")
        c1=$(cpu $pid)
        rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
        reqs=$(echo "$out" | awk '/requests in/{print $1}')
        echo "$3 $size rps=$rps cpu_us_per_req=$(python3 -c "print(f'{($c1-$c0)*1e6/$hz/$reqs:.2f}')")"
    done
    kill $pid
    wait $pid 2>/dev/null || true
}
for _ in $(seq "$ROUNDS"); do
    run "$OLD" 18601 old
    run "$NEW" 18602 new
done
