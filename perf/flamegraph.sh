#!/usr/bin/env bash
# Records where a running node spends CPU and renders a flamegraph SVG.
#
#   perf/flamegraph.sh [--pid PID] [--seconds 20] [--load URL] [--out flame.svg]
#
# --load URL runs wrk against URL (pinned away from the node's CPUs if possible)
# while recording. Needs perf (Debian: apt-get install linux-perf) and inferno
# (cargo install inferno). Profile a node built with `cargo build --profile profiling`
# (release plus line tables; target/profiling/tessera): plain release builds carry no
# debug info, so their stacks have function names but no inlined frames or lines.
set -euo pipefail
pid="" seconds=20 load="" out="flame.svg"
while (($#)); do
    case "$1" in
        --pid) pid=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --load) load=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ -z "$pid" ] && pid=$(pgrep -xo tessera || true)
[ -n "$pid" ] || { echo "no running tessera; pass --pid" >&2; exit 2; }
command -v perf >/dev/null || { echo "perf not found: apt-get install linux-perf" >&2; exit 2; }
command -v inferno-collapse-perf >/dev/null || { echo "inferno not found: cargo install inferno" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
if [ -n "$load" ]; then
    command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 2; }
    wrk -t2 -c64 -d"$((seconds + 2))s" "$load" >"$tmp/wrk.txt" &
    sleep 1
fi
perf record -F 999 -g --call-graph dwarf,16384 -p "$pid" -o "$tmp/perf.data" -- sleep "$seconds"
perf script -i "$tmp/perf.data" | inferno-collapse-perf | inferno-flamegraph --title "tessera pid $pid" >"$out"
[ -n "$load" ] && wait && grep -E "Requests/sec|Transfer/sec" "$tmp/wrk.txt"
echo "wrote $out"
