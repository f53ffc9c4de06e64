#!/usr/bin/env bash
# Memory per idle keep-alive connection, Tessera against nginx, in one run:
# each server on one core; a client opens N connections, sends one 4 KiB GET
# on each (so every connection has served a request and sits idle in
# keep-alive), and holds them. The server's RSS before and with the
# connections held, divided by N, is its memory per idle connection; the
# last request's latency over all N connections, one more GET each while
# they are all held, gives p50/p99. The RSS is read after IDLE_SETTLE_S
# seconds (default 2) with all of them idle.
#
#   bench/idle-connections.sh [N ...]     (default: 1000 10000)
#
# Needs: nginx (nginx-light), python3, curl; uses the release build of
# tessera (builds it unless TESSERA_BIN is set).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=bench/lib.sh
source bench/lib.sh
counts=("$@")
settle=${IDLE_SETTLE_S:-2}
((${#counts[@]})) || counts=(1000 10000)
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
[ -x "$NGINX_BIN" ] || { echo "nginx not found: apt-get install -y nginx-light" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)"
bench_setup idle
mkdir -p bench/out "$work/www" "$work/nginx" "$work/client"
chmod 755 "$work" "$work/www"
head -c 4096 /dev/urandom > "$work/www/4k.bin"
chmod 644 "$work/www/4k.bin"

nport=18596 tport=18597
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 65536;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 65536; }
http {
    access_log off;
    sendfile on;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
$(nginx_temps "$work/nginx")
    server { listen 127.0.0.1:$nport backlog=65535; root $work/www; }
}
CONF
taskset -c 0 "$NGINX_BIN" -c "$work/nginx/nginx.conf" -g 'daemon off;' 2>"$work/nginx/stderr" &
nginx_pid=$!
pids+=($nginx_pid)
taskset -c 0 "$TESSERA_BIN" run --data-dir "$work/tessera" --listen 127.0.0.1:$tport --cores 1 \
    2>"$work/tessera.log" &
tessera_pid=$!
pids+=($tessera_pid)
for _ in $(seq 100); do
    curl -sf http://127.0.0.1:$tport/healthz >/dev/null && curl -sf http://127.0.0.1:$nport/4k.bin >/dev/null && break
    sleep 0.1
done
hash=$(TESSERA_CLIENT_DIR="$work/client" "$TESSERA_BIN" put "$work/www/4k.bin" --node http://127.0.0.1:$tport | awk '{print $1}')
sleep 1

rss_kib() { # the sum of the processes' RSS, KiB
    local t=0 p
    for p in $1; do t=$((t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status"))); done
    echo $t
}

# The client: prints "p50_ms p99_ms" once all n are held, then holds them until
# a line comes on its stdin (so the script is a file, not python's stdin).
cat > "$work/hold.py" <<'PY'
import socket, sys, time, selectors
port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
def exchange(s):
    s.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += s.recv(65536)
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    exchange(s)
    socks.append(s)
lat = []
for s in socks:
    t = time.perf_counter()
    exchange(s)
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()
print(f"{lat[len(lat)//2]:.3f} {lat[min(len(lat)-1, int(len(lat)*0.99))]:.3f}", flush=True)
sys.stdin.readline()
PY

npids="$nginx_pid $(pgrep -P "$nginx_pid" | tr '\n' ' ')"
json="{\"date\":\"$(date -u +%FT%TZ)\",\"cpu\":\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\",\"rows\":["
sep=""
printf '%-8s %-8s %12s %12s %14s %10s %10s\n' server conns rss_idle_kib rss_held_kib bytes_per_conn p50_ms p99_ms
for n in "${counts[@]}"; do
    for server in tessera nginx; do
        if [ $server = tessera ]; then port=$tport path=/blobs/$hash p=$tessera_pid; else port=$nport path=/4k.bin p=$npids; fi
        before=$(rss_kib "$p")
        coproc HOLD { python3 "$work/hold.py" "$port" "$path" "$n"; }
        read -r p50 p99 <&"${HOLD[0]}"
        # Both servers get the same seconds with every connection idle before
        # their memory is read (Tessera releases spare buffers a second or two
        # after they go unused).
        sleep "$settle"
        held=$(rss_kib "$p")
        echo >&"${HOLD[1]}"
        wait "$HOLD_PID" 2>/dev/null || true
        per=$(( (held - before) * 1024 / n ))
        printf '%-8s %-8s %12s %12s %14s %10s %10s\n' $server "$n" "$before" "$held" "$per" "$p50" "$p99"
        json+="$sep{\"server\":\"$server\",\"connections\":$n,\"rss_idle_kib\":$before,\"rss_held_kib\":$held,\"bytes_per_connection\":$per,\"p50_ms\":$p50,\"p99_ms\":$p99}"
        sep=","
        sleep 0.5
    done
done
json+="]}"
echo "$json" > bench/out/idle-connections.json
echo "wrote bench/out/idle-connections.json"
