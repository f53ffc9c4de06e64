# Shared by the bench shell scripts (source it after `cd` to the repo root).
#
#   bench_setup NAME   builds tessera unless TESSERA_BIN is set; makes $work (a
#                      temp dir); every pid added to the `pids` array is killed,
#                      and $work removed, when the script exits.

bench_setup() {
    if [ -z "${TESSERA_BIN:-}" ]; then
        cargo build --release --locked -q
        TESSERA_BIN=${CARGO_TARGET_DIR:-target}/release/tessera
    fi
    work=$(mktemp -d "/tmp/tessera-$1.XXXXXX")
    pids=()
    trap bench_cleanup EXIT INT TERM
}

bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
