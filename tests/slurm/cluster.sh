#!/usr/bin/env bash
# A real one-node SLURM (22.05, Debian 12) with two fake GPUs, for tests/test_slurm.py and for trying
# profiles/slurm by hand. No systemd: munged, slurmctld and slurmd are started here, in the
# background, and `stop` kills exactly the pids that `start` recorded.
#
#   tests/slurm/cluster.sh start     # install if missing, start, wait until the node is idle (bounded)
#   export SLURM_CONF=/tmp/petiq-slurm/etc/slurm.conf   # start prints this line
#   sinfo; srun --gpus=1 env | grep GPU
#   tests/slurm/cluster.sh stop      # cancel our jobs, kill our daemons (by recorded pid)
#   tests/slurm/cluster.sh status | install | env
#
# Exit status: 0 ready · 2 SLURM cannot be installed here · 3 it cannot be started here (port in
# use, a real SLURM config in /etc/slurm, a daemon that dies at once) · 1 anything else, e.g. a node
# that never becomes idle. Safe to rerun: `start` reuses a healthy cluster it started before and
# otherwise stops what it had started and starts afresh. Its last lines on stdout are
# SLURM_CONF=<path> and STARTED=1 (or 0 when it reused a cluster that was running already).
# Once SLURM is installed, /etc/slurm/slurm.conf links to the running cluster's config, or after
# `stop` is a stub that makes SLURM clients fail at once (see link_stopped_conf).
#
# Settings (environment): PETIQ_SLURM_DIR (state, logs, config; /tmp/petiq-slurm),
# PETIQ_SLURM_CTLD_PORT (6817), PETIQ_SLURM_SLURMD_PORT (6818), PETIQ_SLURM_CPUS (nproc, at least 2),
# PETIQ_SLURM_MEM_MB (MemTotal less 1 GiB), PETIQ_SLURM_START_TIMEOUT (seconds to wait for an idle
# node; 60), PETIQ_SLURM_CLIENT_TIMEOUT (seconds for one client call; 20).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${PETIQ_SLURM_DIR:-/tmp/petiq-slurm}
CTLD_PORT=${PETIQ_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${PETIQ_SLURM_SLURMD_PORT:-6818}
START_TIMEOUT=${PETIQ_SLURM_START_TIMEOUT:-60}
CLIENT_TIMEOUT=${PETIQ_SLURM_CLIENT_TIMEOUT:-20}
NGPUS=2
HOST=$(hostname -s)
CONF=$STATE/etc/slurm.conf
ETC_CONF=/etc/slurm/slurm.conf   # srun inside a job step finds its config only here
PACKAGES=(slurmctld slurmd slurm-client munge)
BINARIES=(munged munge slurmctld slurmd sbatch srun squeue scontrol sinfo scancel)
DAEMONS=(slurmd slurmctld munged)  # stop order; start order is the reverse
export SLURM_CONF=$CONF

log() { echo "cluster.sh: $*" >&2; }
die() {
    local code=$1
    shift
    log "$*"
    exit "$code"
}
client() { timeout -k 5 "$CLIENT_TIMEOUT" "$@"; }

# --- install -------------------------------------------------------------------------------------
missing_binaries() {
    local b missing=()
    for b in "${BINARIES[@]}"; do command -v "$b" > /dev/null || missing+=("$b"); done
    echo "${missing[*]}"
}

install() {
    local missing
    missing=$(missing_binaries)
    [ -z "$missing" ] && return 0
    log "missing: $missing; installing ${PACKAGES[*]} with apt-get"
    [ "$(id -u)" = 0 ] || die 2 "SLURM is not installed ($missing missing) and installing it needs root: apt-get install ${PACKAGES[*]}"
    command -v apt-get > /dev/null || die 2 "SLURM is not installed ($missing missing) and there is no apt-get here"
    mkdir -p "$STATE/log"
    local apt=(apt-get -o DPkg::Lock::Timeout=120 -o Acquire::Retries=2)
    export DEBIAN_FRONTEND=noninteractive
    timeout -k 10 300 "${apt[@]}" update -qq > "$STATE/log/apt.log" 2>&1 ||
        die 2 "apt-get update failed: $(tail -n 3 "$STATE/log/apt.log" | tr '\n' ' ')"
    timeout -k 10 600 "${apt[@]}" install -y -qq --no-install-recommends "${PACKAGES[@]}" >> "$STATE/log/apt.log" 2>&1 ||
        die 2 "apt-get install ${PACKAGES[*]} failed: $(tail -n 3 "$STATE/log/apt.log" | tr '\n' ' ')"
    missing=$(missing_binaries)
    [ -z "$missing" ] || die 2 "still missing after apt-get install: $missing"
    link_stopped_conf
}

# While no cluster runs, /etc/slurm/slurm.conf is a stub (a plain file, so that it outlives a
# cleaned /tmp) whose controller refuses at once. Without any config, SLURM clients search DNS for
# a controller for a minute, and snakemake-executor-plugin-slurm runs `scontrol show config` at
# every `snakemake` start (to word the help of --slurm-status-command) whenever sinfo is on PATH:
# each start would wait 10 s.
STUB_MARK="# petiq test SLURM stub (tests/slurm/cluster.sh)"
etc_conf_is_ours() {  # absent, a symlink, or our stub: ours to replace; else a real SLURM's
    [ ! -e "$ETC_CONF" ] || [ -L "$ETC_CONF" ] || [ "$(head -n 1 "$ETC_CONF" 2> /dev/null)" = "$STUB_MARK" ]
}

link_stopped_conf() {
    etc_conf_is_ours || return 0
    mkdir -p "$(dirname "$ETC_CONF")"
    rm -f "$ETC_CONF"
    printf '%s\n' "$STUB_MARK" "# No cluster runs here now: SLURM clients fail at once. cluster.sh start replaces this." \
        "ClusterName=petiqci" "SlurmctldHost=$HOST(127.0.0.1)" "SlurmctldPort=$CTLD_PORT" "MessageTimeout=1" \
        > "$ETC_CONF.tmp"
    mv "$ETC_CONF.tmp" "$ETC_CONF"
}

# --- our daemons ----------------------------------------------------------------------------------
pidfile() { echo "$STATE/run/$1.started-pid"; }

# the pid that `start` recorded for daemon $1, if that process still runs that program (not a zombie)
our_pid() {
    local pid
    pid=$(cat "$(pidfile "$1")" 2> /dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [ "$(cat "/proc/$pid/comm" 2> /dev/null)" = "$1" ] || return 1
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2> /dev/null)" != Z ] || return 1
    echo "$pid"
}

node_state() { client sinfo -h -N -n "$HOST" -o %T 2> /dev/null | head -n 1; }

launch() {  # name, then the command; records the pid (setsid execs in place: $! is the daemon)
    local name=$1
    shift
    setsid "$@" < /dev/null >> "$STATE/log/$name.out" 2>&1 9>&- &  # 9: our lock, not theirs
    echo $! > "$(pidfile "$name")"
}

kill_ours() {
    local name=$1 pid i
    if pid=$(our_pid "$name"); then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2> /dev/null || true
        for i in $(seq 1 40); do
            our_pid "$name" > /dev/null || break
            sleep 0.25
        done
        if our_pid "$name" > /dev/null; then
            log "$name (pid $pid) ignored SIGTERM for 10 s: SIGKILL"
            kill -KILL "$pid" 2> /dev/null || true
        fi
    fi
    rm -f "$(pidfile "$name")"
}

cancel_our_jobs() {
    our_pid slurmctld > /dev/null || return 0
    local ids i
    ids=$(client squeue -h -t PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED -o %i 2> /dev/null || true)
    [ -z "$ids" ] && return 0
    log "cancelling jobs: $(echo $ids)"
    client scancel $ids 2> /dev/null || true
    for i in $(seq 1 20); do
        [ -z "$(client squeue -h -t RUNNING,COMPLETING -o %i 2> /dev/null || true)" ] && return 0
        sleep 0.5
    done
    log "jobs still running after scancel: $(client squeue -h -o '%i %T' 2> /dev/null | tr '\n' ' ')"
}

stop_daemons() {
    cancel_our_jobs
    local d
    for d in "${DAEMONS[@]}"; do kill_ours "$d"; done
}

# --- configuration --------------------------------------------------------------------------------
port_busy() { (echo > "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }

render() {  # template, destination
    local cpus mem gpu_files
    cpus=${PETIQ_SLURM_CPUS:-$(nproc)}
    [ "$cpus" -ge 2 ] || cpus=2  # rules ask for 2 threads; SLURM takes the configured count
    mem=${PETIQ_SLURM_MEM_MB:-$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - 1024))}
    gpu_files="/dev/fakegpu[0-$((NGPUS - 1))]"
    sed -e "s|@HOST@|$HOST|g" -e "s|@STATE@|$STATE|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
        -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEM_MB@|$mem|g" \
        -e "s|@NGPUS@|$NGPUS|g" -e "s|@GPU_FILES@|$gpu_files|g" "$1" > "$2.tmp"
    mv "$2.tmp" "$2"
}

prepare() {
    mkdir -p "$STATE"/{etc,ctld,spool,run,log,munge}
    chmod 0755 "$STATE" "$STATE"/{etc,ctld,spool,run,log}
    chmod 0700 "$STATE/munge"
    if [ ! -s "$STATE/munge/munge.key" ]; then
        dd if=/dev/urandom of="$STATE/munge/munge.key.tmp" bs=1024 count=1 status=none
        mv "$STATE/munge/munge.key.tmp" "$STATE/munge/munge.key"
    fi
    chmod 0400 "$STATE/munge/munge.key"
    local f
    for f in munged slurmctld slurmd; do : > "$STATE/log/$f.out" && : > "$STATE/log/$f.log"; done  # this start's logs only
    render "$HERE/slurm.conf.in" "$CONF"
    render "$HERE/gres.conf.in" "$STATE/etc/gres.conf"
    local i dev
    for i in $(seq 0 $((NGPUS - 1))); do
        dev=/dev/fakegpu$i
        [ -c "$dev" ] || { rm -f "$dev" && mknod -m 0666 "$dev" c 1 3; } ||
            die 3 "cannot create the fake GPU device $dev (mknod c 1 3)"
    done
    mkdir -p "$(dirname "$ETC_CONF")"
    etc_conf_is_ours ||
        die 3 "$ETC_CONF is a real SLURM configuration (not ours): not touching it; this machine has its own SLURM"
    ln -sfn "$CONF" "$ETC_CONF.tmp" && mv -T "$ETC_CONF.tmp" "$ETC_CONF"
}

wait_for_munge() {
    local i
    for i in $(seq 1 40); do
        if [ -S "$STATE/munge/munge.socket" ] &&
            client munge -n -S "$STATE/munge/munge.socket" 2> /dev/null | client unmunge -S "$STATE/munge/munge.socket" > /dev/null 2>&1; then
            return 0
        fi
        our_pid munged > /dev/null || die 3 "munged exited at once: $(tail -n 5 "$STATE/log/munged.out" "$STATE/log/munged.log" 2> /dev/null | tr '\n' ' ')"
        sleep 0.25
    done
    die 1 "munged runs but its socket does not answer after 10 s"
}

wait_for_node() {
    local deadline=$((SECONDS + START_TIMEOUT)) state="" d
    while [ "$SECONDS" -lt "$deadline" ]; do
        for d in slurmctld slurmd; do
            our_pid "$d" > /dev/null ||
                die 3 "$d exited at once: $(tail -n 8 "$STATE/log/$d.out" "$STATE/log/$d.log" 2> /dev/null | tr '\n' ' ')"
        done
        state=$(node_state || true)
        case "$state" in
            idle | mixed | allocated) return 0 ;;
            down* | drain* | fail*) client scontrol update nodename="$HOST" state=resume > /dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    die 1 "node $HOST is not idle after ${START_TIMEOUT}s (state: '${state:-no answer}'); logs in $STATE/log"
}

healthy() {
    local d
    for d in "${DAEMONS[@]}"; do our_pid "$d" > /dev/null || return 1; done
    [ -f "$CONF" ] && [ "$(readlink "$ETC_CONF" 2> /dev/null)" = "$CONF" ] || return 1
    case "$(node_state || true)" in idle | mixed | allocated) return 0 ;; *) return 1 ;; esac
}

start() {
    install
    local started=0
    if healthy; then
        log "reusing the running cluster (state in $STATE)"
    else
        started=1
        stop_daemons
        trap start_failed EXIT  # a start that dies half-way leaves nothing running, clients fast
        local p
        for p in "$CTLD_PORT" "$SLURMD_PORT"; do
            port_busy "$p" && die 3 "port $p is in use by a process this script did not start (another SLURM?)"
        done
        prepare
        launch munged munged -F --force --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.socket" \
            --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munged.seed"
        wait_for_munge
        launch slurmctld slurmctld -D -c -i -f "$CONF"
        launch slurmd slurmd -D -f "$CONF" -N "$HOST"
        wait_for_node
        trap - EXIT
        log "ready: node $HOST idle, $NGPUS fake GPUs, partitions debug (default) and gpu; state in $STATE"
    fi
    echo "SLURM_CONF=$CONF"
    echo "STARTED=$started"  # 0: it was running already (whoever started it should stop it)
}

start_failed() {
    local code=$?
    [ "$code" = 0 ] && return
    stop_daemons
    link_stopped_conf
    exit "$code"
}

stop() {
    stop_daemons
    link_stopped_conf
    log "stopped"
}

status() {
    local d pid
    for d in munged slurmctld slurmd; do
        if pid=$(our_pid "$d"); then echo "$d: running (pid $pid)"; else echo "$d: not running"; fi
    done
    if our_pid slurmctld > /dev/null; then
        client sinfo -N -o "%N %P %T %c %m %G" || true
        client squeue -o "%i %j %T %b %k" || true
    fi
}

main() {
    local cmd=${1:-}
    case "$cmd" in
        install | start | stop | status)
            mkdir -p "$STATE/run" "$STATE/log"
            exec 9> "$STATE.lock"
            flock -w 120 9 || die 3 "another cluster.sh holds $STATE.lock for more than 120 s"
            "$cmd"
            ;;
        env) echo "SLURM_CONF=$CONF" ;;
        *) die 64 "usage: $0 install|start|stop|status|env" ;;
    esac
}

main "$@"
