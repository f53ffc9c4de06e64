#!/usr/bin/env bash
# Tessera's static-site hosting against nginx serving the same folder, in one
# run on one machine: a site with an index.html (8 KiB of HTML) and a 1 MiB
# asset, deployed with `tessera deploy site`, asked at its own host
# (bench.sites.localhost); nginx 1 worker, sendfile, etags, the same CPUs.
#
#   bench/site-vs-nginx.sh [--cores N] [--duration SECS] [--connections C]
#
# Reports, for `/` (index.html) and the 1 MiB asset: req/s (closed loop,
# tessera-bench on the other CPUs), the server's CPU time per request, and p99
# at the same offered load (open loop at half of the slower server's peak).
# Writes bench/out/site-vs-nginx.json.
#
# Needs: nginx (nginx-light), curl, python3; builds tessera and tessera-bench
# in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_args 8 "$@"

NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
[ -x "$NGINX_BIN" ] || { echo "nginx not found: apt-get install -y nginx-light" >&2; exit 2; }
bench_setup site
cargo build --release --locked -q -p tessera-bench
BENCH_BIN=${CARGO_TARGET_DIR:-target}/release/tessera-bench
mkdir -p bench/out "$work/www/assets" "$work/nginx" "$work/client"
chmod 755 "$work" "$work/www" "$work/www/assets"
python3 - "$work/www/index.html" <<'PY'
import sys
rows = "".join(f"<li><a href=/p/{i}>page {i}</a></li>\n" for i in range(230))
open(sys.argv[1], "w").write(f"<!doctype html><html><head><title>bench</title></head><body><ul>\n{rows}</ul></body></html>\n")
PY
head -c 1048576 /dev/urandom > "$work/www/assets/data.3f2a9c1b.bin"
chmod 644 "$work/www/index.html" "$work/www/assets/"*

nport=18590 tport=18591
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes $cores;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    include /etc/nginx/mime.types;
$(nginx_temps "$work/nginx")
    server {
        listen 127.0.0.1:$nport;
        root $work/www;
        index index.html;
        location / { add_header Cache-Control "public, max-age=0, must-revalidate"; }
    }
}
CONF
taskset -c "$server_cpus" "$NGINX_BIN" -c "$work/nginx/nginx.conf" -g 'daemon off;' 2>"$work/nginx/stderr" &
nginx_pid=$!
pids+=($nginx_pid)
taskset -c "$server_cpus" "$TESSERA_BIN" run --data-dir "$work/tessera" \
    --listen 127.0.0.1:$tport --cores "$cores" 2>"$work/tessera.log" &
pids+=($!)
for _ in $(seq 100); do
    curl -sf http://127.0.0.1:$tport/healthz >/dev/null && curl -sf http://127.0.0.1:$nport/ >/dev/null && break
    sleep 0.1
done
export TESSERA_CLIENT_DIR="$work/client"
"$TESSERA_BIN" deploy site --name bench "$work/www" --node "http://127.0.0.1:$tport" >/dev/null
host="Host: bench.sites.localhost"
declare -A path=([index]=/ [1m]=/assets/data.3f2a9c1b.bin) file=([index]=index.html [1m]=assets/data.3f2a9c1b.bin)
for f in index 1m; do  # the same bytes from both
    cmp <(curl -sf -H "$host" "http://127.0.0.1:$tport${path[$f]}") "$work/www/${file[$f]}"
    cmp <(curl -sf "http://127.0.0.1:$nport${path[$f]}") "$work/www/${file[$f]}"
done
curl -sI -H "$host" "http://127.0.0.1:$tport/" | grep -i '^etag\|^cache-control' | tr -d '\r' | tr '\n' ' '; echo

load() { # port path host-header [rate] -> json
    local out="$work/load.json" rate=() hdr=()
    [ -n "$3" ] && hdr=(--header "$3")
    [ -n "${4:-}" ] && rate=(--rate "$4")
    "$BENCH_BIN" load --addr "127.0.0.1:$1" --path "$2" --connections "$connections" \
        --threads "$load_threads" --cpus "$load_cpus" --duration "$duration" "${hdr[@]}" "${rate[@]}" \
        --json "$out" >/dev/null
    cat "$out"
}

json="{\"date\":\"$(date -u +%FT%TZ)\",\"cores\":$cores,\"connections\":$connections,\"duration_s\":$duration,\"cpu\":\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\",\"files\":["
sep=""
printf '%-6s %12s %12s %7s %11s %11s %10s %10s\n' file tessera_rps nginx_rps ratio t_us/req n_us/req t_p99_ms n_p99_ms
for f in index 1m; do
    tpids=$(pgrep -f "tessera run --data-dir $work"); npids="$nginx_pid $(pgrep -P "$nginx_pid" | tr '\n' ' ')"
    c0=$(cpu_of "$tpids"); load $tport "${path[$f]}" "$host" > "$work/t.json"; c1=$(cpu_of "$tpids")
    d0=$(cpu_of "$npids"); load $nport "${path[$f]}" "" > "$work/n.json"; d1=$(cpu_of "$npids")
    t_rps=$(field "$work/t.json" rps) n_rps=$(field "$work/n.json" rps)
    t_n=$(field "$work/t.json" completed) n_n=$(field "$work/n.json" completed)
    t_cpu=$(python3 -c "print(f'{($c1-$c0)/$t_n*1e6:.1f}')") n_cpu=$(python3 -c "print(f'{($d1-$d0)/$n_n*1e6:.1f}')")
    rate=$(python3 -c "print(int(min($t_rps, $n_rps) / 2))")
    load $tport "${path[$f]}" "$host" "$rate" > "$work/t2.json"; load $nport "${path[$f]}" "" "$rate" > "$work/n2.json"
    t_p99=$(field "$work/t2.json" p99_ms) n_p99=$(field "$work/n2.json" p99_ms)
    ratio=$(python3 -c "print(f'{$t_rps/$n_rps:.2f}')")
    printf '%-6s %12.0f %12.0f %7s %11s %11s %10.3f %10.3f\n' "$f" "$t_rps" "$n_rps" "$ratio" "$t_cpu" "$n_cpu" "$t_p99" "$n_p99"
    json+="$sep{\"file\":\"$f\",\"tessera_rps\":$t_rps,\"nginx_rps\":$n_rps,\"ratio\":$ratio,\"tessera_cpu_us_per_req\":$t_cpu,\"nginx_cpu_us_per_req\":$n_cpu,\"offered_rps\":$rate,\"tessera_p99_ms\":$t_p99,\"nginx_p99_ms\":$n_p99,\"tessera_errors\":$(field "$work/t.json" errors),\"nginx_errors\":$(field "$work/n.json" errors)}"
    sep=","
done
json+="]}"
echo "$json" > bench/out/site-vs-nginx.json
echo "wrote bench/out/site-vs-nginx.json"
