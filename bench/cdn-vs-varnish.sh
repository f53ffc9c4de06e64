#!/usr/bin/env bash
# Tessera's CDN against Varnish, in one run on one machine, both in front of the
# same nginx origin (Debian's nginx serving 4 KiB and 1 MiB files with
# Cache-Control: max-age=3600) and, for the stampede, the same slow origin
# (tests/common/origin.py: /slow waits a second).
#
#   bench/cdn-vs-varnish.sh [--cores N] [--duration SECS] [--connections C]
#
# Reports, per object size: cache-hit req/s (closed loop, tessera-bench), the
# server's CPU time per request, and p99 at the same offered load (open loop at
# half of the slower server's peak); then origin requests under a stampede of
# 1,000 concurrent requests for one cold object. Varnish: Debian's varnishd,
# malloc storage, pinned to the same CPUs as Tessera's cores. Writes
# bench/out/cdn-vs-varnish.json.
#
# Needs: nginx (nginx-light), varnish, curl, python3 (apt-get install -y
# nginx-light varnish); builds tessera and tessera-bench in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_args 8 "$@"

NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
VARNISHD_BIN=${VARNISHD_BIN:-$(command -v varnishd || echo /usr/sbin/varnishd)}
[ -x "$NGINX_BIN" ] || { echo "nginx not found: apt-get install -y nginx-light" >&2; exit 2; }
[ -x "$VARNISHD_BIN" ] || { echo "varnishd not found: apt-get install -y varnish" >&2; exit 2; }
bench_setup cdn
cargo build --release --locked -q -p tessera-bench
BENCH_BIN=${CARGO_TARGET_DIR:-target}/release/tessera-bench
mkdir -p bench/out "$work/www" "$work/nginx" "$work/varnish" "$work/client"
chmod 755 "$work" "$work/www"
head -c 4096 /dev/urandom > "$work/www/4k"
head -c 1048576 /dev/urandom > "$work/www/1m"
chmod 644 "$work/www/"*

# The origins (on the load CPUs: they serve each object once).
oport=18490 sport=18491 tport=18492 vport=18493
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
$(nginx_temps "$work/nginx")
    server {
        listen 127.0.0.1:$oport;
        root $work/www;
        add_header Cache-Control "max-age=3600";
    }
}
CONF
taskset -c "$load_cpus" "$NGINX_BIN" -c "$work/nginx/nginx.conf" -g 'daemon off;' 2>"$work/nginx/stderr" &
pids+=($!)
taskset -c "$load_cpus" python3 tests/common/origin.py $sport > "$work/slow.out" &
pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:$oport/4k >/dev/null && grep -q ready "$work/slow.out" && break; sleep 0.1; done

# Tessera, two zones.
taskset -c "$server_cpus" "$TESSERA_BIN" run --data-dir "$work/tessera" \
    --listen 127.0.0.1:$tport --cores "$cores" 2>"$work/tessera.log" &
pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:$tport/healthz >/dev/null && break; sleep 0.1; done
export TESSERA_CLIENT_DIR="$work/client"
"$TESSERA_BIN" deploy cdn --name files --origin "http://127.0.0.1:$oport" --node "http://127.0.0.1:$tport" >/dev/null
"$TESSERA_BIN" deploy cdn --name slow --origin "http://127.0.0.1:$sport" --node "http://127.0.0.1:$tport" >/dev/null
for _ in $(seq 100); do [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$tport/cdn/files/4k)" = 200 ] && break; sleep 0.1; done

# Varnish, malloc storage, the same CPUs; the slow origin for /slow.
cat > "$work/varnish/default.vcl" <<VCL
vcl 4.1;
backend files { .host = "127.0.0.1"; .port = "$oport"; }
backend slow { .host = "127.0.0.1"; .port = "$sport"; .first_byte_timeout = 30s; }
sub vcl_recv {
    if (req.url ~ "^/slow") { set req.backend_hint = slow; } else { set req.backend_hint = files; }
}
VCL
chmod -R a+rX "$work/varnish"
taskset -c "$server_cpus" "$VARNISHD_BIN" -F -n "$work/varnish/run" -a 127.0.0.1:$vport \
    -f "$work/varnish/default.vcl" -s malloc,512m -p thread_pools="$cores" \
    >"$work/varnish/log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do curl -sf http://127.0.0.1:$vport/4k >/dev/null && break; sleep 0.1; done

declare -A turl=([4k]=/cdn/files/4k [1m]=/cdn/files/1m) vurl=([4k]=/4k [1m]=/1m)
for f in 4k 1m; do  # warm, and the same bytes from both
    for _ in 1 2; do
        cmp <(curl -sf "http://127.0.0.1:$tport${turl[$f]}") "$work/www/$f"
        cmp <(curl -sf "http://127.0.0.1:$vport${vurl[$f]}") "$work/www/$f"
    done
done
curl -sI "http://127.0.0.1:$tport${turl[4k]}" | grep -i '^cache-status' | tr -d '\r'
curl -sI "http://127.0.0.1:$vport${vurl[4k]}" | grep -i '^x-varnish\|^age' | tr -d '\r' | tr '\n' ' '; echo

# CPU seconds of every process whose command line matches $1.
cpu_of() {
    local total=0 pid
    for pid in $(pgrep -f "$1"); do
        read -r -a st < "/proc/$pid/stat" || continue
        total=$((total + st[13] + st[14]))
    done
    python3 -c "print($total / $(getconf CLK_TCK))"
}

load() { # port path [rate] -> json file
    local out="$work/load.json" rate=()
    [ -n "${3:-}" ] && rate=(--rate "$3")
    "$BENCH_BIN" load --addr "127.0.0.1:$1" --path "$2" --connections "$connections" \
        --threads "$load_threads" --cpus "$load_cpus" --duration "$duration" "${rate[@]}" \
        --json "$out" >/dev/null
    cat "$out"
}

json="{\"date\":\"$(date -u +%FT%TZ)\",\"cores\":$cores,\"connections\":$connections,\"duration_s\":$duration,\"cpu\":\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\",\"hits\":["
sep=""
printf '%-4s %12s %12s %7s %11s %11s %10s %10s\n' obj tessera_rps varnish_rps ratio t_us/req v_us/req t_p99_ms v_p99_ms
for f in 4k 1m; do
    c0=$(cpu_of "tessera run --data-dir $work"); load $tport "${turl[$f]}" > "$work/t.json"; c1=$(cpu_of "tessera run --data-dir $work")
    d0=$(cpu_of "varnishd -F -n $work"); load $vport "${vurl[$f]}" > "$work/v.json"; d1=$(cpu_of "varnishd -F -n $work")
    t_rps=$(field "$work/t.json" rps) v_rps=$(field "$work/v.json" rps)
    t_n=$(field "$work/t.json" completed) v_n=$(field "$work/v.json" completed)
    t_cpu=$(python3 -c "print(f'{($c1-$c0)/$t_n*1e6:.1f}')") v_cpu=$(python3 -c "print(f'{($d1-$d0)/$v_n*1e6:.1f}')")
    # p99 at the same offered load: half the slower one's peak.
    rate=$(python3 -c "print(int(min($t_rps, $v_rps) / 2))")
    load $tport "${turl[$f]}" "$rate" > "$work/t2.json"; load $vport "${vurl[$f]}" "$rate" > "$work/v2.json"
    t_p99=$(field "$work/t2.json" p99_ms) v_p99=$(field "$work/v2.json" p99_ms)
    ratio=$(python3 -c "print(f'{$t_rps/$v_rps:.2f}')")
    printf '%-4s %12.0f %12.0f %7s %11s %11s %10.3f %10.3f\n' "$f" "$t_rps" "$v_rps" "$ratio" "$t_cpu" "$v_cpu" "$t_p99" "$v_p99"
    json+="$sep{\"object\":\"$f\",\"tessera_rps\":$t_rps,\"varnish_rps\":$v_rps,\"ratio\":$ratio,\"tessera_cpu_us_per_req\":$t_cpu,\"varnish_cpu_us_per_req\":$v_cpu,\"offered_rps\":$rate,\"tessera_p99_ms\":$t_p99,\"varnish_p99_ms\":$v_p99,\"tessera_errors\":$(field "$work/t.json" errors),\"varnish_errors\":$(field "$work/v.json" errors)}"
    sep=","
done

# The stampede: 1,000 concurrent requests for one cold object (the origin
# takes a second), each server's own query string so both start cold.
stampede() { # port path -> "ok_count origin_requests"
    local before after
    before=$(curl -s http://127.0.0.1:$sport/count | python3 -c "import json,sys; print(json.load(sys.stdin).get('/slow',0))")
    for _ in $(seq 1000); do printf 'url = "http://127.0.0.1:%s%s"\noutput = "/dev/null"\n' "$1" "$2"; done > "$work/urls"
    ok=$(curl -s --parallel --parallel-immediate --parallel-max 1000 --max-time 60 -w '%{http_code}\n' -K "$work/urls" 2>/dev/null | grep -c '^200$' || true)
    after=$(curl -s http://127.0.0.1:$sport/count | python3 -c "import json,sys; print(json.load(sys.stdin).get('/slow',0))")
    echo "$ok $((after - before))"
}
read -r t_ok t_origin < <(stampede $tport "/cdn/slow/slow?ms=1000&run=tessera")
read -r v_ok t_vorigin < <(stampede $vport "/slow?ms=1000&run=varnish")
echo "stampede of 1000: tessera $t_ok answered, $t_origin origin request(s); varnish $v_ok answered, $t_vorigin origin request(s)"
json+="],\"stampede\":{\"clients\":1000,\"tessera_ok\":$t_ok,\"tessera_origin_requests\":$t_origin,\"varnish_ok\":$v_ok,\"varnish_origin_requests\":$t_vorigin}}"
echo "$json" > bench/out/cdn-vs-varnish.json
echo "wrote bench/out/cdn-vs-varnish.json"
