#!/usr/bin/env bash
# First side-by-side: the same 4 KiB and 1 MiB files served by Tessera and by nginx
# (Debian's package, sendfile on, same core count), loaded by the same load generator
# (wrk, closed loop) pinned to other CPUs, in the same run. Prints req/s, GB/s and
# the ratios Tessera/nginx, and writes bench/out/side-by-side.json.
#
#   bench/side-by-side.sh [--cores N] [--duration SECS] [--connections C]
#
# Needs: nginx and wrk (apt-get install -y nginx wrk); builds tessera in release mode.
# TESSERA_BIN / NGINX_BIN / WRK_BIN override the binaries (for machines without a
# registry: carry them and unpack Debian's packages, see bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_args 10 "$@"

NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
WRK_BIN=${WRK_BIN:-$(command -v wrk || true)}
[ -x "$NGINX_BIN" ] || { echo "nginx not found: apt-get install -y nginx" >&2; exit 2; }
[ -n "$WRK_BIN" ] || { echo "wrk not found: apt-get install -y wrk" >&2; exit 2; }
bench_setup bench

mkdir -p "$work/www" "$work/nginx" bench/out
chmod 755 "$work" "$work/www"  # nginx workers run as an unprivileged user
head -c 4096 /dev/urandom > "$work/www/4k"
head -c 1048576 /dev/urandom > "$work/www/1m"
chmod 644 "$work/www/"*

# Tessera
tport=18480
taskset -c "$server_cpus" "$TESSERA_BIN" run --data-dir "$work/tessera" \
    --listen 127.0.0.1:$tport --cores "$cores" 2>"$work/tessera.log" &
pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:$tport/healthz >/dev/null && break; sleep 0.1; done
declare -A path_t
for f in 4k 1m; do
    h=$("$TESSERA_BIN" put --node http://127.0.0.1:$tport "$work/www/$f" | cut -d' ' -f1)
    path_t[$f]="/blobs/$h"
done

# nginx: same files, sendfile on, same number of workers pinned to the same CPUs.
nport=18481
mask=""
for ((i = 0; i < cores; i++)); do
    m=$(printf '%0*d' "$cpus" 0); m="${m:0:$((cpus - 1 - i))}1${m:$((cpus - i))}"
    mask="$mask $m"
done
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes $cores;
worker_cpu_affinity $mask;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
$(nginx_temps "$work/nginx")
    server {
        listen 127.0.0.1:$nport reuseport;
        root $work/www;
    }
}
CONF
"$NGINX_BIN" -c "$work/nginx/nginx.conf" -g 'daemon off;' 2>"$work/nginx/stderr" &
pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:$nport/4k >/dev/null && break; sleep 0.1; done

# Same bytes from both, checked before measuring.
for f in 4k 1m; do
    cmp <(curl -sf "http://127.0.0.1:$tport${path_t[$f]}") "$work/www/$f"
    cmp <(curl -sf "http://127.0.0.1:$nport/$f") "$work/www/$f"
done

run_wrk() { # url -> "req_per_s bytes_per_s"
    taskset -c "$load_cpus" "$WRK_BIN" -t"$load_threads" -c"$connections" -d"${duration}s" --latency "$1" >"$work/wrk.out"
    python3 - "$work/wrk.out" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s*([\d.]+)", text).group(1))
m = re.search(r"Transfer/sec:\s*([\d.]+)(\w+)", text)
unit = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}[m.group(2)]
p99 = re.search(r"99%\s+([\d.]+\w+)", text).group(1)
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(rps, float(m.group(1)) * unit, p99, errors.group(1) if errors else 0)
PY
}

printf '%-6s %14s %14s %10s %10s %10s %10s %8s\n' object tessera_req/s nginx_req/s t_GB/s n_GB/s t_p99 n_p99 ratio
json="{\"date\":\"$(date -u +%FT%TZ)\",\"cores\":$cores,\"connections\":$connections,\"duration_s\":$duration,\"cpu\":\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\",\"results\":["
sep=""
for f in 4k 1m; do
    read -r t_rps t_bps t_p99 t_err < <(run_wrk "http://127.0.0.1:$tport${path_t[$f]}")
    read -r n_rps n_bps n_p99 n_err < <(run_wrk "http://127.0.0.1:$nport/$f")
    ratio=$(python3 -c "print(f'{$t_rps/$n_rps:.2f}')")
    printf '%-6s %14.0f %14.0f %10.2f %10.2f %10s %10s %8s\n' "$f" "$t_rps" "$n_rps" \
        "$(python3 -c "print($t_bps/1e9)")" "$(python3 -c "print($n_bps/1e9)")" "$t_p99" "$n_p99" "$ratio"
    json+="$sep{\"object\":\"$f\",\"tessera_rps\":$t_rps,\"nginx_rps\":$n_rps,\"tessera_bytes_per_s\":$t_bps,\"nginx_bytes_per_s\":$n_bps,\"tessera_p99\":\"$t_p99\",\"nginx_p99\":\"$n_p99\",\"tessera_errors\":$t_err,\"nginx_errors\":$n_err,\"ratio_rps\":$ratio}"
    sep=","
done
echo "$json]}" > bench/out/side-by-side.json
echo "zero-copy bytes served by tessera: $(curl -s http://127.0.0.1:$tport/metrics | awk '/^tessera_zero_copy_bytes_total/ {print $2}')"
echo "wrote bench/out/side-by-side.json"
