#!/usr/bin/env bash
# Core-scaling run on a many-core machine that has no package registry.
# Build the kit here with `bench/device-kit.sh` (release binaries, Debian's nginx
# and wrk unpacked, a font; packed into target/kit.tgz), carry that, then run
# this there:
#
#   bench/device-run.sh [KIT] [OUTDIR]     (KIT: target/kit or target/kit.tgz)
#
# It runs wrk side by side (bench/side-by-side.sh) and `tessera-bench suite`
# on 1, 2, 4 and 8 server cores with the load generators on CPUs 8-15, then
# bench/h3-cpu-curve.sh on 1 and 8 cores at the same HTTP/3 load per core.
set -uo pipefail
cd "$(dirname "$0")/.."
kit=$(realpath "${1:-target/kit}")
# The carried tarball from bench/device-kit.sh: unpacked outside the checkout.
if [[ $kit == *.tgz ]]; then
    mkdir -p /tmp/tessera-kit && tar -C /tmp/tessera-kit -xzf "$kit" && kit=/tmp/tessera-kit/kit
fi
final=$(realpath -m "${2:-bench/out/device}")
# Results are gathered in one folder and packed into one tarball at the end
# (the device tool brings back a limited number of files).
out=$(mktemp -d /tmp/tessera-device.XXXXXX)
trap 'tar -C "$out" -czf "$final/results.tgz" . && echo "packed $final/results.tgz"' EXIT
mkdir -p "$final"
export LD_LIBRARY_PATH="$kit/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TESSERA_BIN=$kit/tessera NGINX_BIN=$kit/root/usr/sbin/nginx WRK_BIN=$kit/root/usr/bin/wrk CADDY_BIN=$kit/root/usr/bin/caddy
export TESSERA_BENCH_FONT=$kit/DejaVuSans.ttf
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
{
    date -u +%FT%TZ
    uname -r
    nproc
    grep -m1 'model name' /proc/cpuinfo
    lscpu | grep -E 'Socket|NUMA node|Thread|Core|MHz' || true
    echo "nofile $(ulimit -n)"
} | tee "$out/machine.txt"
ldd "$NGINX_BIN" | grep 'not found' && { echo "nginx libraries missing" >&2; exit 2; }
duration=${DURATION:-5}
for c in ${CORES:-1 2 4 8}; do
    echo "== wrk side by side, $c server cores"
    bench/side-by-side.sh --cores "$c" --duration "$duration" --connections $((64 * c)) 2>&1 | tee "$out/wrk-$c.txt"
    cp bench/out/side-by-side.json "$out/wrk-$c.json" 2>/dev/null || true
done
echo "== tessera-bench suite"
"$kit/tessera-bench" suite --cores "$(echo ${CORES:-1 2 4 8} | tr " " "\n" | tail -1)" --scaling "$(echo ${CORES:-1 2 4 8} | tr ' ' ,)" --load-cpus "${LOAD_CPUS:-8-15}" \
    --connections 256 --duration "$duration" --warmup 1 --only "${ONLY:-4k,1m,h3-4k,h3-1m}" --loads 0.5,0.9 --h3 \
    --out "$out/suite" 2>&1 | tee "$out/suite.txt"
echo "== HTTP/3 CPU per request at the same load per core, 1 and 8 cores"
# The suite's 8-core HTTP/3 peak is the load generator's limit (about 9k req/s
# per core there), so its CPU per request is a light-load figure; this compares
# 1 and 8 cores at equal offered load per core.
CORES=${H3_CURVE_CORES:-1 8} LOAD_CPUS=${LOAD_CPUS:-8-15} PER_CORE_RATES="2500 8000" TESSERA_BENCH_BIN=$kit/tessera-bench \
    bench/h3-cpu-curve.sh "$kit/tessera" 2>&1 | tee "$out/h3-cpu-curve.txt"
