#!/usr/bin/env bash
# The replicated ledger: a 4-member committee on loopback
# (127.0.0.31–34), measured two ways:
#   1. commit latency: N deposits, one after another, each timed from the POST
#      to the moment the node reports the account's nonce advanced (what
#      `tessera account --deposit` waits for), at the given unit pace;
#   2. idle cost: CPU seconds per node over a quiet window, side by side with
#      the same four nodes run without a ledger (the peer in this run).
#
#   bench/ledger.sh [--deposits 20] [--unit-ms 500] [--idle-s 20]
#
# Needs: curl, python3; builds tessera in release mode (TESSERA_BIN overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
deposits=20 unit_ms=500 idle_s=20
while (($#)); do
    case "$1" in
        --deposits) deposits=$2; shift 2 ;;
        --unit-ms) unit_ms=$2; shift 2 ;;
        --idle-s) idle_s=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_setup ledger
port=7831
ids=()
for i in 1 2 3 4; do
    ids+=("$("$TESSERA_BIN" keys init --data-dir "$work/n$i" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')")
done
genesis=$(printf '"%s",' "${ids[@]}")
cpu_s() { # pid -> CPU seconds so far (user + system)
    awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"
}
start_four() { # with_ledger(0|1)
    local started=()
    for i in 1 2 3 4; do
        local cfg="$work/n$i.toml"
        printf 'listen = "127.0.0.3%d:%d"\ndata_dir = "%s"\ncores = 1\n' "$i" "$port" "$work/n$i" >"$cfg"
        if [ "$1" = 1 ]; then
            printf '[ledger]\ngenesis = [%s]\nepoch_ms = 600000\nunit_ms = %d\ndev_deposits = true\nstake = 100\n' \
                "${genesis%,}" "$unit_ms" >>"$cfg"
        fi
        RUST_LOG=warn "$TESSERA_BIN" run --config "$cfg" --join "127.0.0.31:$port" 2>>"$work/log" &
        pids+=($!)
        started+=($!)
    done
    four=("${started[@]}")
    for i in 1 2 3 4; do
        for _ in $(seq 100); do curl -sf "http://127.0.0.3$i:$port/healthz" >/dev/null && break; sleep 0.1; done
    done
}
idle_cpu() { # -> mean CPU seconds per node per minute over idle_s
    local before=() sum=0
    for p in "${four[@]}"; do before+=("$(cpu_s "$p")"); done
    sleep "$idle_s"
    local k=0
    for p in "${four[@]}"; do
        sum=$(python3 -c "print($sum + $(cpu_s "$p") - ${before[$k]})")
        k=$((k + 1))
    done
    python3 -c "print(round($sum / 4 / $idle_s * 60, 3))"
}
stop_four() {
    for p in "${four[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${four[@]}"; do wait "$p" 2>/dev/null || true; done
}

echo "== four nodes without a ledger (the peer)"
start_four 0
sleep 3
plain=$(idle_cpu)
echo "idle CPU: $plain CPU-s per node per minute"
stop_four
rm -rf "$work"/n*/receipts.log

echo "== four nodes with a ledger (unit_ms $unit_ms)"
start_four 1
node=http://127.0.0.32:$port
for _ in $(seq 300); do
    n=$(curl -sf "$node/ledger/reputation" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["nodes"]))' 2>/dev/null || echo 0)
    [ "$n" = 4 ] && break
    sleep 0.2
done
export TESSERA_CLIENT_DIR=$work/client
"$TESSERA_BIN" account --node "$node" --deposit 1 >/dev/null # makes the client key
client=$("$TESSERA_BIN" account --node "$node" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
python3 - "$node" "$client" "$deposits" "$TESSERA_BIN" <<'EOF'
import json, subprocess, sys, time, urllib.request
node, client, n, binary = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def nonce():
    with urllib.request.urlopen(f"{node}/ledger/account/{client}") as r:
        return json.load(r)["nonce"]
lat = []
for _ in range(n):
    before = nonce()
    t0 = time.monotonic()
    subprocess.run([binary, "account", "--node", node, "--deposit", "1"], check=True,
                   stdout=subprocess.DEVNULL)
    while nonce() <= before:
        time.sleep(0.005)
    lat.append((time.monotonic() - t0) * 1000)
lat.sort()
print(f"commit latency over {n} deposits: p50 {lat[len(lat)//2]:.0f} ms, "
      f"min {lat[0]:.0f} ms, max {lat[-1]:.0f} ms")
EOF
ledger=$(idle_cpu)
echo "idle CPU: $ledger CPU-s per node per minute"
python3 -c "print(f'idle CPU with ledger / without: {$ledger / max($plain, 1e-9):.1f}x ({$ledger - $plain:.2f} CPU-s per node per minute for the ledger)')"
