#!/usr/bin/env bash
# Tessera's edge functions against workerd (Cloudflare's Workers runtime)
# running the same worker scripts, in one run on one machine, both servers
# on the same CPUs (--cores, default 1): Tessera with one data-plane core
# and one function worker thread, workerd as one process.
#
#   bench/functions-vs-workerd.sh [--cores N] [--duration SECS] [--connections C]
#
# Scripts (bench/functions/): hello.js (a fixed answer), json.js (a JSON
# document of 50 items rendered per request), compute.js (fib(22) per
# request: pure interpreter work, where V8's JIT is far ahead of QuickJS).
# Reports for each: req/s (closed loop, tessera-bench on the other CPUs),
# the server's CPU time per request, p99 at the same offered load (open loop
# at half of the slower server's peak); then cold starts (the first request
# after a deploy, and after a workerd start; new isolates in-process with
# `tessera-bench isolate`) and the memory an idle function holds (RSS
# growth over 50 functions, each asked once). Writes
# bench/out/functions-vs-workerd.json.
#
# Needs: workerd (WORKERD_BIN, else the one scripts/test installs), curl,
# python3; builds tessera and tessera-bench in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_args 8 "$@"

WORKERD_BIN=${WORKERD_BIN:-$(ls "${XDG_CACHE_HOME:-$HOME/.cache}"/tessera-test/workerd-*/node_modules/@cloudflare/workerd-linux-64/bin/workerd 2>/dev/null | tail -1)}
[ -x "${WORKERD_BIN:-}" ] || { echo "workerd not found: set WORKERD_BIN, or run scripts/test once (it installs workerd from npm)" >&2; exit 2; }
bench_setup functions
cargo build --release --locked -q -p tessera-bench
BENCH_BIN=${CARGO_TARGET_DIR:-target}/release/tessera-bench
mkdir -p bench/out "$work/wd" "$work/client"
scripts=(hello json compute)
tport=18691 wbase=18700

# workerd: one socket per script (and, for the memory figure, more below).
workerd_config() { # out-file count-of-extra-hello-workers
    local out=$1 extra=$2 i=0 services="" sockets="" workers=""
    for s in "${scripts[@]}"; do
        cp "bench/functions/$s.js" "$work/wd/$s.js"
        services+="    (name = \"$s\", worker = .w$s),"$'\n'
        sockets+="    (name = \"$s\", address = \"127.0.0.1:$((wbase + i))\", http = (), service = \"$s\"),"$'\n'
        workers+="const w$s :Workerd.Worker = (modules = [(name = \"$s\", esModule = embed \"$s.js\")], compatibilityDate = \"2024-09-23\");"$'\n'
        i=$((i + 1))
    done
    for ((j = 0; j < extra; j++)); do
        services+="    (name = \"m$j\", worker = .wm$j),"$'\n'
        sockets+="    (name = \"m$j\", address = \"127.0.0.1:$((wbase + 100 + j))\", http = (), service = \"m$j\"),"$'\n'
        workers+="const wm$j :Workerd.Worker = (modules = [(name = \"m$j\", esModule = embed \"hello.js\")], compatibilityDate = \"2024-09-23\");"$'\n'
    done
    printf 'using Workerd = import "/workerd/workerd.capnp";\nconst config :Workerd.Config = (\n  services = [\n%s  ],\n  sockets = [\n%s  ],\n);\n%s' \
        "$services" "$sockets" "$workers" > "$out"
}
wait_port() { for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.05; done; echo "nothing on port $1" >&2; return 1; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

workerd_config "$work/wd/config.capnp" 0
taskset -c "$server_cpus" "$WORKERD_BIN" serve "$work/wd/config.capnp" 2>"$work/workerd.log" &
workerd_pid=$!
pids+=($workerd_pid)
printf '[services.function]\nworkers = %s\n' "$cores" > "$work/tessera.toml"
taskset -c "$server_cpus" "$TESSERA_BIN" run --data-dir "$work/tessera" --config "$work/tessera.toml" \
    --listen 127.0.0.1:$tport --cores "$cores" 2>"$work/tessera.log" &
pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:$tport/healthz >/dev/null && break; sleep 0.1; done
export TESSERA_CLIENT_DIR="$work/client"
for s in "${scripts[@]}"; do
    "$TESSERA_BIN" deploy function --name "$s" "bench/functions/$s.js" --node "http://127.0.0.1:$tport" >/dev/null
done
i=0
for s in "${scripts[@]}"; do  # the same answer from both
    wait_port $((wbase + i))
    cmp <(curl -sf -H "Host: $s.fn.localhost" "http://127.0.0.1:$tport/") <(curl -sf "http://127.0.0.1:$((wbase + i))/")
    i=$((i + 1))
done

load() { # port host-header [rate] -> json
    local out="$work/load.json" rate=() hdr=()
    [ -n "$2" ] && hdr=(--header "$2")
    [ -n "${3:-}" ] && rate=(--rate "$3")
    "$BENCH_BIN" load --addr "127.0.0.1:$1" --path / --connections "$connections" \
        --threads "$load_threads" --cpus "$load_cpus" --duration "$duration" "${hdr[@]}" "${rate[@]}" \
        --json "$out" >/dev/null
    cat "$out"
}

json="{\"date\":\"$(date -u +%FT%TZ)\",\"cores\":$cores,\"connections\":$connections,\"duration_s\":$duration,\"cpu\":\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\",\"workerd\":\"$("$WORKERD_BIN" --version)\",\"scripts\":["
sep=""
printf '%-8s %12s %12s %7s %11s %11s %10s %10s\n' script tessera_rps workerd_rps ratio t_us/req w_us/req t_p99_ms w_p99_ms
i=0
tpids=$(pgrep -f "tessera run --data-dir $work")
for s in "${scripts[@]}"; do
    host="Host: $s.fn.localhost" wport=$((wbase + i))
    c0=$(cpu_of "$tpids"); load $tport "$host" > "$work/t.json"; c1=$(cpu_of "$tpids")
    d0=$(cpu_of "$workerd_pid"); load $wport "" > "$work/w.json"; d1=$(cpu_of "$workerd_pid")
    t_rps=$(field "$work/t.json" rps) w_rps=$(field "$work/w.json" rps)
    t_n=$(field "$work/t.json" completed) w_n=$(field "$work/w.json" completed)
    t_cpu=$(python3 -c "print(f'{($c1-$c0)/max($t_n,1)*1e6:.1f}')") w_cpu=$(python3 -c "print(f'{($d1-$d0)/max($w_n,1)*1e6:.1f}')")
    rate=$(python3 -c "print(max(1, int(min($t_rps, $w_rps) / 2)))")
    load $tport "$host" "$rate" > "$work/t2.json"; load $wport "" "$rate" > "$work/w2.json"
    t_p99=$(field "$work/t2.json" p99_ms) w_p99=$(field "$work/w2.json" p99_ms)
    ratio=$(python3 -c "print(f'{$t_rps/$w_rps:.2f}')")
    printf '%-8s %12.0f %12.0f %7s %11s %11s %10.3f %10.3f\n' "$s" "$t_rps" "$w_rps" "$ratio" "$t_cpu" "$w_cpu" "$t_p99" "$w_p99"
    json+="$sep{\"script\":\"$s\",\"tessera_rps\":$t_rps,\"workerd_rps\":$w_rps,\"ratio\":$ratio,\"tessera_cpu_us_per_req\":$t_cpu,\"workerd_cpu_us_per_req\":$w_cpu,\"offered_rps\":$rate,\"tessera_p99_ms\":$t_p99,\"workerd_p99_ms\":$w_p99,\"tessera_errors\":$(field "$work/t.json" errors),\"workerd_errors\":$(field "$work/w.json" errors)}"
    sep=","
    i=$((i + 1))
done
json+="],"

# Cold starts. Tessera: the first request after a deploy of a new version
# (the deploy returns once the node compiled it; the request builds the
# isolate). workerd: the first request after the process starts.
first_ms() { curl -s -o /dev/null -w '%{time_total}' "$@" | python3 -c "import sys; print(f'{float(sys.stdin.read())*1000:.2f}')"; }
t_cold=() w_cold=()
for k in 1 2 3 4 5; do
    "$TESSERA_BIN" deploy function --name hello "bench/functions/hello.js" --var "ROUND=$k" --node "http://127.0.0.1:$tport" >/dev/null
    t_cold+=("$(first_ms -H "Host: hello.fn.localhost" "http://127.0.0.1:$tport/")")
done
kill "$workerd_pid"; wait "$workerd_pid" 2>/dev/null || true
for k in 1 2 3 4 5; do
    t0=$(date +%s%N)
    taskset -c "$server_cpus" "$WORKERD_BIN" serve "$work/wd/config.capnp" 2>>"$work/workerd.log" &
    wpid=$!
    until curl -s -o /dev/null "http://127.0.0.1:$wbase/"; do sleep 0.005; done
    w_cold+=("$(python3 -c "print(f'{($(date +%s%N) - $t0)/1e6:.1f}')")")
    kill "$wpid"; wait "$wpid" 2>/dev/null || true
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "cold start, first request after deploy (tessera, incl. HTTP): median $(median "${t_cold[@]}") ms of ${t_cold[*]}"
echo "cold start, workerd process start to first answer:            median $(median "${w_cold[@]}") ms of ${w_cold[*]}"
"$BENCH_BIN" isolate --script bench/functions/hello.js --iterations 1000 --json > "$work/iso_hello.json"
"$BENCH_BIN" isolate --script bench/functions/json.js --iterations 1000 --json > "$work/iso_json.json"
for s in hello json; do
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"in-process, $s.js: new isolate + request p50 {r['cold_p50_us']:.0f} µs p99 {r['cold_p99_us']:.0f} µs; warm p50 {r['warm_p50_us']:.1f} µs; idle heap {r['idle_isolate_heap_bytes']//1024} KiB; compile {r['compile_us']:.0f} µs\")" "$work/iso_$s.json"
done

# Memory per idle function: 50 more functions, each asked once.
n=50
before=$(rss_kb "$(pgrep -f "tessera run --data-dir $work" | head -1)")
for ((j = 0; j < n; j++)); do
    "$TESSERA_BIN" deploy function --name "m$j" bench/functions/hello.js --node "http://127.0.0.1:$tport" >/dev/null
done
for ((j = 0; j < n; j++)); do curl -sf -o /dev/null -H "Host: m$j.fn.localhost" "http://127.0.0.1:$tport/"; done
after=$(rss_kb "$(pgrep -f "tessera run --data-dir $work" | head -1)")
t_mem=$(python3 -c "print(f'{($after - $before) / $n:.0f}')")
workerd_rss() { # extra-workers -> RSS kB after asking each
    workerd_config "$work/wd/m.capnp" "$1"
    taskset -c "$server_cpus" "$WORKERD_BIN" serve "$work/wd/m.capnp" 2>>"$work/workerd.log" &
    local wpid=$! j
    wait_port $wbase >/dev/null
    for ((j = 0; j < $1; j++)); do wait_port $((wbase + 100 + j)) >/dev/null; done
    sleep 0.5
    rss_kb $wpid
    kill $wpid; wait $wpid 2>/dev/null || true
}
w0=$(workerd_rss 0) wn=$(workerd_rss $n)
w_mem=$(python3 -c "print(f'{($wn - $w0) / $n:.0f}')")
echo "memory per idle function (RSS growth over $n, each asked once): tessera $t_mem KiB, workerd $w_mem KiB"
json+="\"cold_first_request_after_deploy_ms\":[$(IFS=,; echo "${t_cold[*]}")],\"workerd_start_to_first_answer_ms\":[$(IFS=,; echo "${w_cold[*]}")],"
json+="\"isolate_hello\":$(cat "$work/iso_hello.json"),\"isolate_json\":$(cat "$work/iso_json.json"),"
json+="\"memory_per_idle_function_kib\":{\"tessera\":$t_mem,\"workerd\":$w_mem}}"
echo "$json" | python3 -m json.tool > bench/out/functions-vs-workerd.json
echo "wrote bench/out/functions-vs-workerd.json"
