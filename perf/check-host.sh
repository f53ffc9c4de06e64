#!/usr/bin/env bash
# Checks this machine against perf/README.md and prints what to change.
# Read-only by default; --apply writes the sysctls to /etc/sysctl.d/90-tessera.conf
# and loads them (root). Exit status: 0 all good, 1 something to change.
#
#   perf/check-host.sh [--pid PID] [--data-dir DIR] [--apply]
set -uo pipefail

pid="" data_dir="" apply=0
while (($#)); do
    case "$1" in
        --pid) pid=$2; shift 2 ;;
        --data-dir) data_dir=$2; shift 2 ;;
        --apply) apply=1; shift ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ -z "$pid" ] && pid=$(pgrep -xo tessera || true)

changes=0
ok() { printf '  ok      %s\n' "$*"; }
change() { printf '  CHANGE  %s\n' "$*"; changes=$((changes + 1)); }
info() { printf '  info    %s\n' "$*"; }

declare -A want=(
    [net.core.somaxconn]=65535
    [net.ipv4.tcp_max_syn_backlog]=65535
    [net.core.netdev_max_backlog]=250000
    [net.core.rmem_max]=16777216
    [net.core.wmem_max]=16777216
    [fs.file-max]=2097152
    [fs.nr_open]=2097152
)

echo "sysctls"
to_apply=()
for key in "${!want[@]}"; do
    have=$(sysctl -n "$key" 2>/dev/null || echo "?")
    if [[ "$have" =~ ^[0-9]+$ ]] && ((have >= want[$key])); then
        ok "$key = $have"
    else
        change "$key = $have, want >= ${want[$key]}: sysctl -w $key=${want[$key]}"
        to_apply+=("$key = ${want[$key]}")
    fi
done
iod=$(sysctl -n kernel.io_uring_disabled 2>/dev/null || echo 0)
if [ "$iod" = 0 ]; then ok "kernel.io_uring_disabled = 0"; else change "kernel.io_uring_disabled = $iod: the node needs io_uring: sysctl -w kernel.io_uring_disabled=0"; to_apply+=("kernel.io_uring_disabled = 0"); fi

echo "limits"
if [ -n "$pid" ] && [ -r "/proc/$pid/limits" ]; then
    nofile=$(awk '/Max open files/ {print $4}' "/proc/$pid/limits")
    memlock=$(awk '/Max locked memory/ {print $4}' "/proc/$pid/limits")
    src="running node (pid $pid)"
else
    nofile=$(ulimit -n) memlock=$(ulimit -l)
    src="this shell"
fi
if [ "$nofile" = unlimited ] || ((nofile >= 1048576)); then ok "open files ($src) = $nofile"; else change "open files ($src) = $nofile: LimitNOFILE=1048576 in the unit, or ulimit -n 1048576"; fi
if [ "$memlock" = unlimited ] || [ "$memlock" = infinity ]; then ok "locked memory ($src) = $memlock"; else change "locked memory ($src) = $memlock: LimitMEMLOCK=infinity in the unit, or ulimit -l unlimited"; fi

echo "CPUs"
cmdline=$(cat /proc/cmdline)
if [[ "$cmdline" == *isolcpus=* ]]; then ok "isolcpus set: $(grep -o 'isolcpus=[^ ]*' /proc/cmdline)"; else info "no isolcpus: for dedicated cores boot with isolcpus=... nohz_full=... (perf/README.md)"; fi
gov=$(cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null || echo "n/a")
case "$gov" in performance|n/a) ok "cpufreq governor: $gov" ;; *) change "cpufreq governor: $gov: cpupower frequency-set -g performance" ;; esac
if pgrep -x irqbalance >/dev/null; then info "irqbalance is running: stop it when pinning NIC IRQs by hand"; fi
threads=$(lscpu -p=CORE 2>/dev/null | grep -v '^#' | wc -l); cores_phys=$(lscpu -p=CORE 2>/dev/null | grep -v '^#' | sort -u | wc -l)
info "$threads CPUs on $cores_phys physical cores; NUMA nodes: $(lscpu | awk -F: '/NUMA node\(s\)/ {gsub(/ /,"",$2); print $2}')"
if [ -n "$pid" ]; then
    info "event loop placement (thread, CPU):"
    ps -L -o comm=,psr= -p "$pid" 2>/dev/null | awk '/tessera-core/ {printf "            %s on CPU %s\n", $1, $2}'
fi

echo "network"
for q in /sys/class/net/*/queues/rx-0/rps_cpus; do
    [ -e "$q" ] || continue
    nic=$(echo "$q" | cut -d/ -f5); [ "$nic" = lo ] && continue
    nq=$(ls -d /sys/class/net/"$nic"/queues/rx-* 2>/dev/null | wc -l)
    mask=$(cat "$q")
    if ((nq > 1)); then ok "$nic: $nq receive queues (RSS)";
    elif [[ "$mask" =~ ^[0,]*$ ]]; then change "$nic: one receive queue and RPS off: echo <cpu mask> > $q";
    else ok "$nic: RPS mask $mask"; fi
done

echo "memory and disk"
thp=$(grep -o '\[[a-z]*\]' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null | tr -d '[]')
case "$thp" in always) change "transparent hugepages = always: echo madvise > /sys/kernel/mm/transparent_hugepage/enabled" ;; *) ok "transparent hugepages = ${thp:-n/a}" ;; esac
pipe_max=$(sysctl -n fs.pipe-max-size 2>/dev/null || echo 0)
if ((pipe_max >= 1048576)); then ok "fs.pipe-max-size = $pipe_max"; else change "fs.pipe-max-size = $pipe_max: splice pipes will be smaller than pipe_bytes: sysctl -w fs.pipe-max-size=1048576"; fi
if [ -n "$data_dir" ] && [ -d "$data_dir" ]; then
    dev=$(df --output=source "$data_dir" | tail -1); base=$(basename "$(readlink -f "$dev")" | sed -E 's/p?[0-9]+$//')
    sched=$(cat "/sys/block/$base/queue/scheduler" 2>/dev/null || echo n/a)
    info "data dir on $dev, scheduler: $sched (NVMe: none; SATA SSD: mq-deadline)"
    if findmnt -no OPTIONS -T "$data_dir" | grep -q noatime; then ok "data dir mounted noatime"; else change "data dir not mounted noatime: add noatime to its fstab entry"; fi
fi

if ((apply)) && ((${#to_apply[@]})); then
    printf '%s\n' "# written by tessera perf/check-host.sh --apply" "${to_apply[@]}" > /etc/sysctl.d/90-tessera.conf
    sysctl -p /etc/sysctl.d/90-tessera.conf
    echo "applied ${#to_apply[@]} sysctls (/etc/sysctl.d/90-tessera.conf)"
fi
echo
if ((changes)); then echo "$changes thing(s) to change (see perf/README.md)"; exit 1; fi
echo "nothing to change"
