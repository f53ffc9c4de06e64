#!/usr/bin/env bash
# Multi-peer fetch: a fresh node fetches one blob it lacks from 1, 2 and
# 4 holders, each holder capping every transfer to a peer at the same rate, and
# the aggregate throughput is compared with the single-peer case. The fetch is
# triggered by a HEAD on the fresh node (fetch on miss, every group verified).
#
#   bench/multi-peer.sh [--size-mib 256] [--cap-mb 50]
#
# Needs: curl; builds tessera in release mode (TESSERA_BIN overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=256 cap_mb=50
while (($#)); do
    case "$1" in
        --size-mib) size_mib=$2; shift 2 ;;
        --cap-mb) cap_mb=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_setup multipeer
cap=$((cap_mb * 1000000))
common=(--cores 1 --gossip-probe-ms 300 --gossip-down-after-ms 1500 --peer-transfer-bytes-per-sec "$cap" --rebalance false)
start() { # ip port dir [join]
    local join=()
    [ -n "${4:-}" ] && join=(--join "$4")
    RUST_LOG=warn "$TESSERA_BIN" run --listen "$1:$2" --data-dir "$3" "${common[@]}" "${join[@]}" 2>>"$work/log" &
    pids+=($!)
    for _ in $(seq 100); do curl -sf "http://$1:$2/healthz" >/dev/null && return; sleep 0.1; done
    echo "node $1:$2 did not start" >&2; exit 1
}
alive() { # url -> alive verified members
    curl -sf "$1/cluster/members" | python3 -c 'import json,sys; print(sum(1 for m in json.load(sys.stdin) if m["state"]=="alive" and m["verified"]))'
}
head -c $((size_mib << 20)) /dev/urandom >"$work/blob"
holders=()
for i in 1 2 3 4; do
    ip=127.0.0.$((20 + i))
    join=""
    [ $i -gt 1 ] && join=127.0.0.21:18600
    start "$ip" 18600 "$work/h$i" "$join"
    holders+=("$ip")
done
hash=""
for ip in "${holders[@]}"; do
    hash=$("$TESSERA_BIN" put --node "http://$ip:18600" "$work/blob" | cut -d' ' -f1)
done
echo "blob $hash, $size_mib MiB on 4 holders; each caps a transfer to a peer at $cap_mb MB/s"
printf '%-6s %10s %12s\n' peers seconds MB/s
base=""
round=0
for k in 4 2 1; do
    # Stop holders beyond k: SIGTERM, so the others hear they left at once.
    while ((${#holders[@]} > k)); do
        last=${holders[-1]}
        pkill -TERM -f "run --listen $last:18600" || true
        unset 'holders[-1]'
    done
    round=$((round + 1))
    ip=127.0.0.$((40 + round))
    start "$ip" 18600 "$work/f$round" "${holders[0]}:18600"
    for _ in $(seq 200); do [ "$(alive "http://$ip:18600")" = $((k + 1)) ] && break; sleep 0.1; done
    t0=$(date +%s.%N)
    curl -sf -o /dev/null -I "http://$ip:18600/blobs/$hash"
    t1=$(date +%s.%N)
    secs=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
    mbs=$(python3 -c "print(f'{$size_mib * 1048576 / 1e6 / ($t1 - $t0):.1f}')")
    [ -z "$base" ] && base=$mbs
    eval "r$k=$mbs"
    printf '%-6s %10s %12s\n' "$k" "$secs" "$mbs"
    cmp <(curl -sf "http://$ip:18600/blobs/$hash") "$work/blob" || { echo "fetched bytes differ" >&2; exit 1; }
    # The fetcher now holds it too: stop it so the next round has k holders only.
    pkill -TERM -f "run --listen $ip:18600" || true
    sleep 0.5
done
python3 -c "print(f'4 peers / 1 peer: {$r4 / $r1:.2f}x   2 peers / 1 peer: {$r2 / $r1:.2f}x')"
