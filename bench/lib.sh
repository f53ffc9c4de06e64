# Shared by the bench shell scripts (source it after `cd` to the repo root).
#
#   bench_args SECS "$@" parses --cores N, --duration SECS (default SECS) and
#                      --connections C into $cores, $duration, $connections, and
#                      splits the CPUs: servers on $server_cpus (the first
#                      $cores), the load generator on $load_cpus with
#                      $load_threads threads (at most 8); $cpus is nproc.
#   bench_setup NAME   builds tessera unless TESSERA_BIN is set; makes $work (a
#                      temp dir); every pid added to the `pids` array is killed,
#                      and $work removed, when the script exits.
#   cpu_of "PIDS"      CPU seconds (user + system) the processes have used.
#   field FILE KEY     a top-level field of a JSON file.
#   nginx_temps DIR    nginx `http` lines that keep its temp files in DIR (a
#                      non-root nginx cannot write Debian's defaults).

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

bench_args() {
    cores=1 duration=$1 connections=64
    shift
    while (($#)); do
        case "$1" in
            --cores) cores=$2; shift 2 ;;
            --duration) duration=$2; shift 2 ;;
            --connections) connections=$2; shift 2 ;;
            *) echo "unknown argument: $1" >&2; exit 2 ;;
        esac
    done
    cpus=$(nproc)
    if ((cpus < cores + 1)); then
        echo "need at least $((cores + 1)) CPUs (servers on $cores, load on the rest); have $cpus" >&2
        exit 2
    fi
    server_cpus="0-$((cores - 1))"
    load_cpus="$cores-$((cpus - 1))"
    load_threads=$((cpus - cores))
    ((load_threads > 8)) && load_threads=8
    return 0
}

cpu_of() {
    local total=0 pid st
    for pid in $1; do
        read -r -a st < "/proc/$pid/stat" || continue
        total=$((total + st[13] + st[14]))
    done
    python3 -c "print($total / $(getconf CLK_TCK))"
}

field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

nginx_temps() {
    local t
    for t in client_body proxy fastcgi uwsgi scgi; do
        echo "    ${t}_temp_path $1/${t/client_body/body};"
    done
}
