#!/usr/bin/env bash
# Memory per held QUIC connection, Tessera beside Caddy (the HTTP/3 peer of the
# suite): each server on one core, N HTTP/3 connections from tessera-bench (one UDP
# socket each), each sending one 4 KiB GET every 4 s on average, so the
# connections are held and mostly idle. The server's RSS before and with them all
# held, divided by N, is its memory per connection; the load generator reports
# p50/p99 of those GETs and any errors. The server's CPU time from 5 s to 13 s
# (all connections up, handshakes done), over the GETs offered in that time, is
# its CPU per request with N connections held: what the held ones cost each
# wake-up shows there.
#
#   bench/idle-quic.sh [N ...]     (default: 1000 5000)
#
# Needs: python3, curl, and Caddy (Debian: apt-get install caddy; CADDY_BIN
# elsewhere; without it the Caddy rows are left out and the script says so);
# builds the release binaries unless TESSERA_BIN and TESSERA_BENCH_BIN are set.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
counts=("$@")
((${#counts[@]})) || counts=(1000 5000)
ulimit -n "$(ulimit -Hn)"
bench_setup idle-quic
target=${CARGO_TARGET_DIR:-target}
if [ -z "${TESSERA_BENCH_BIN:-}" ]; then
    cargo build --release --locked -q -p tessera-bench
    TESSERA_BENCH_BIN=$target/release/tessera-bench
fi
mkdir -p bench/out
head -c 4096 /dev/urandom > "$work/4k.bin"
max=0
for n in "${counts[@]}"; do ((n > max)) && max=$n; done
port=18598
cat > "$work/tessera.toml" <<CONF
h3_max_connections_per_core = $((max + 1000))
h3_idle_timeout_ms = 120000
CONF

caddy=${CADDY_BIN:-/usr/bin/caddy}
[ -x "$caddy" ] || { echo "no Caddy at $caddy (apt-get install caddy): Tessera only" >&2; caddy=""; }
mkdir -p "$work/www"
cp "$work/4k.bin" "$work/www/4k.bin"

# The CPU clock ticks (user + system) a process has used.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# measure SERVER PID PATH N: holds N connections on the server at $port, prints a row.
measure() {
    local server=$1 pid=$2 path=$3 n=$4 before held p50 p99 errors per cpu0 cpu1 us
    sleep 1
    before=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    # Connections ramp up in the first seconds; RSS is read at 10 s of 14.
    taskset -c 1 "$TESSERA_BENCH_BIN" load --h3 --addr 127.0.0.1:$port --path "$path" \
        --connections "$n" --rate "$((n / 4))" --duration 14 --warmup 4 --timeout 30 \
        --json "$work/load.json" >"$work/load.out" 2>&1 &
    load_pid=$!
    sleep 5
    cpu0=$(cpu_ticks "$pid")
    sleep 5
    held=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    sleep 3
    cpu1=$(cpu_ticks "$pid")
    wait "$load_pid"
    read -r p50 p99 errors < <(python3 -c "
import json; r = json.load(open('$work/load.json'))
print(r['p50_ms'], r['p99_ms'], r['errors'])")
    per=$(( (held - before) * 1024 / n ))
    # 8 s at n/4 GETs per second; clock ticks to microseconds.
    us=$(python3 -c "print(round(($cpu1 - $cpu0) / $(getconf CLK_TCK) * 1e6 / (8 * $n / 4), 1))")
    printf '%-8s %-8s %12s %12s %14s %10s %10s %8s %12s\n' "$server" "$n" "$before" "$held" "$per" "$p50" "$p99" "$errors" "$us"
    json+="$sep{\"server\":\"$server\",\"connections\":$n,\"rss_idle_kib\":$before,\"rss_held_kib\":$held,\"bytes_per_connection\":$per,\"p50_ms\":$p50,\"p99_ms\":$p99,\"errors\":$errors,\"server_cpu_us_per_request\":$us}"
    sep=","
}

json="{\"date\":\"$(date -u +%FT%TZ)\",\"cpu\":\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\",\"rows\":["
sep=""
printf '%-8s %-8s %12s %12s %14s %10s %10s %8s %12s\n' server conns rss_idle_kib rss_held_kib bytes_per_conn p50_ms p99_ms errors cpu_us_per_req
for n in "${counts[@]}"; do
    # A fresh server per count, so one count's connections do not linger into the next.
    rm -rf "$work/data"
    taskset -c 0 "$TESSERA_BIN" run --config "$work/tessera.toml" --data-dir "$work/data" \
        --listen 127.0.0.1:$port --cores 1 2>"$work/tessera.log" &
    tessera_pid=$!
    pids+=($tessera_pid)
    for _ in $(seq 100); do curl -sf http://127.0.0.1:$port/healthz >/dev/null && break; sleep 0.1; done
    hash=$(TESSERA_CLIENT_DIR="$work/client" "$TESSERA_BIN" put "$work/4k.bin" --node http://127.0.0.1:$port | awk '{print $1}')
    measure tessera "$tessera_pid" "/blobs/$hash" "$n"
    # Caddy serves with the certificate Tessera generated (as in the suite).
    rm -rf "$work/tls" && cp -r "$work/data/tls" "$work/tls"
    kill "$tessera_pid"
    wait "$tessera_pid" 2>/dev/null || true
    [ -n "$caddy" ] || continue
    mkdir -p "$work/caddy"
    cat > "$work/caddy/Caddyfile" <<CONF
{
 admin off
 auto_https disable_redirects
 skip_install_trust
 servers {
  protocols h1 h2 h3
 }
 log {
  level ERROR
 }
}
https://:$port {
 bind 127.0.0.1
 tls $work/tls/cert.pem $work/tls/key.pem
 root * $work/www
 file_server
}
CONF
    GOMAXPROCS=1 XDG_DATA_HOME="$work/caddy/data" XDG_CONFIG_HOME="$work/caddy/config" HOME="$work/caddy" \
        taskset -c 0 "$caddy" run --adapter caddyfile --config "$work/caddy/Caddyfile" \
        >/dev/null 2>"$work/caddy.log" &
    caddy_pid=$!
    pids+=($caddy_pid)
    for _ in $(seq 100); do curl -skf "https://localhost:$port/4k.bin" -o /dev/null && break; sleep 0.1; done
    measure caddy "$caddy_pid" /4k.bin "$n"
    kill "$caddy_pid"
    wait "$caddy_pid" 2>/dev/null || true
done
echo "$json]}" > bench/out/idle-quic.json
echo "wrote bench/out/idle-quic.json"
