#!/usr/bin/env bash
# The IPFS gateway against the node's own blob path (the floor), in one run on
# one node: the same bytes asked as a blob (`/blobs/{hash}`) and through the
# trustless gateway (`/ipfs/{cid}`).
#
#   bench/ipfs-vs-blobs.sh [--cores N] [--duration SECS] [--connections C]
#
# Content, imported with `tessera ipfs add` (CIDv1, raw leaves, sha2-256, as
# ipfs-car makes them) and also put as plain blobs: a 4 KiB file (one raw
# block), a 1 MiB file (one raw block, the largest leaf) and a 100 MiB file
# (100 leaves under one dag-pb node). Rows:
#   raw-4k, raw-1m   ?format=raw of the block   vs the blob of the same bytes
#   car-4k           ?format=car of the 4 KiB CID vs the 4 KiB blob
#   car-100m         ?format=car of the 100 MiB file (dag-scope=all)  vs its blob
#   file-100m        the 100 MiB file, deserialized                  vs its blob
# Each: req/s (closed loop, tessera-bench on the other CPUs), the node's CPU
# time per request, GB/s, and the gateway/blob ratio. The target: a raw block
# costs no more than a blob GET of the same size. Writes bench/out/ipfs.json.
#
# Needs: curl, python3; builds tessera and tessera-bench in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_args 8 "$@"
bench_setup ipfs
cargo build --release --locked -q -p tessera-bench
BENCH_BIN=${CARGO_TARGET_DIR:-target}/release/tessera-bench
mkdir -p bench/out "$work/files" "$work/client"
head -c 4096 /dev/urandom > "$work/files/4k.bin"
head -c 1048576 /dev/urandom > "$work/files/1m.bin"
head -c 104857600 /dev/urandom > "$work/files/100m.bin"

port=18594
node="http://127.0.0.1:$port"
taskset -c "$server_cpus" "$TESSERA_BIN" run --data-dir "$work/tessera" \
    --listen 127.0.0.1:$port --cores "$cores" 2>"$work/tessera.log" &
pids+=($!)
for _ in $(seq 100); do
    curl -sf "$node/healthz" >/dev/null && break
    sleep 0.1
done
export TESSERA_CLIENT_DIR="$work/client" TESSERA_NODE="$node"
"$TESSERA_BIN" ipfs token >/dev/null
declare -A cid hash size
for f in 4k 1m 100m; do
    cid[$f]=$("$TESSERA_BIN" ipfs add --no-wrap "$work/files/$f.bin")
    hash[$f]=$("$TESSERA_BIN" put "$work/files/$f.bin" | awk '{print $1}')
    size[$f]=$(stat -c %s "$work/files/$f.bin")
    # The same bytes both ways.
    cmp <(curl -sf "$node/blobs/${hash[$f]}") "$work/files/$f.bin"
    cmp <(curl -sf "$node/ipfs/${cid[$f]}") "$work/files/$f.bin"
done
cmp <(curl -sf "$node/ipfs/${cid[4k]}?format=raw") "$work/files/4k.bin"
echo "CIDs: 4k ${cid[4k]}  1m ${cid[1m]}  100m ${cid[100m]}"
car_bytes() { curl -sf "$node/ipfs/$1?format=car" | wc -c; }

load() { # path connections -> json
    local out="$work/load.json"
    "$BENCH_BIN" load --addr "127.0.0.1:$port" --path "$1" --connections "$2" \
        --threads "$load_threads" --cpus "$load_cpus" --duration "$duration" \
        --json "$out" >/dev/null
    cat "$out"
}

tpids=$(pgrep -f "tessera run --data-dir $work")
# name gateway-path blob-path bytes-per-gateway-answer bytes-per-blob-answer connections
rows=(
    "raw-4k /ipfs/${cid[4k]}?format=raw /blobs/${hash[4k]} ${size[4k]} ${size[4k]} $connections"
    "raw-1m /ipfs/${cid[1m]}?format=raw /blobs/${hash[1m]} ${size[1m]} ${size[1m]} 8"
    "car-4k /ipfs/${cid[4k]}?format=car /blobs/${hash[4k]} $(car_bytes "${cid[4k]}") ${size[4k]} $connections"
    "car-100m /ipfs/${cid[100m]}?format=car /blobs/${hash[100m]} $(car_bytes "${cid[100m]}") ${size[100m]} 4"
    "file-100m /ipfs/${cid[100m]} /blobs/${hash[100m]} ${size[100m]} ${size[100m]} 4"
)
json="{\"date\":\"$(date -u +%FT%TZ)\",\"cores\":$cores,\"duration_s\":$duration,\"cpu\":\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\",\"rows\":["
sep=""
printf '%-10s %11s %11s %7s %10s %10s %9s %9s\n' row ipfs_rps blob_rps ratio i_us/req b_us/req i_GB/s b_GB/s
for r in "${rows[@]}"; do
    read -r name ipath bpath ibytes bbytes conns <<<"$r"
    c0=$(cpu_of "$tpids"); load "$ipath" "$conns" > "$work/i.json"; c1=$(cpu_of "$tpids")
    load "$bpath" "$conns" > "$work/b.json"; c2=$(cpu_of "$tpids")
    i_rps=$(field "$work/i.json" rps) b_rps=$(field "$work/b.json" rps)
    i_n=$(field "$work/i.json" completed) b_n=$(field "$work/b.json" completed)
    read -r ratio i_cpu b_cpu i_gbs b_gbs < <(python3 -c "
i, b = $i_rps, $b_rps
print(f'{i/b:.2f} {($c1-$c0)/max($i_n,1)*1e6:.1f} {($c2-$c1)/max($b_n,1)*1e6:.1f} {i*$ibytes/1e9:.3f} {b*$bbytes/1e9:.3f}')")
    printf '%-10s %11.0f %11.0f %7s %10s %10s %9s %9s\n' "$name" "$i_rps" "$b_rps" "$ratio" "$i_cpu" "$b_cpu" "$i_gbs" "$b_gbs"
    json+="$sep{\"row\":\"$name\",\"ipfs_rps\":$i_rps,\"blob_rps\":$b_rps,\"ratio\":$ratio,\"ipfs_cpu_us_per_req\":$i_cpu,\"blob_cpu_us_per_req\":$b_cpu,\"ipfs_gb_s\":$i_gbs,\"blob_gb_s\":$b_gbs,\"connections\":$conns,\"ipfs_errors\":$(field "$work/i.json" errors),\"blob_errors\":$(field "$work/b.json" errors)}"
    sep=","
done
json+="]}"
echo "$json" > bench/out/ipfs.json
echo "wrote bench/out/ipfs.json"
