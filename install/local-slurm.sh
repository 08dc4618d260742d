#!/bin/sh
# A real single-node Slurm cluster on this machine, for the slow tests of aloe's batch executors (dask-jobqueue).
# Debian's slurm-wlm (slurmctld + slurmd) and munge; no systemd, no cgroups (works in containers and VMs).
# Usage: install/local-slurm.sh install            apt-get install slurm-wlm and munge, only those missing
#        install/local-slurm.sh start [STATE_DIR]  write slurm.conf for this host, start munged, slurmctld, slurmd
#                                                  and wait until the node is idle (already running: just report)
#        install/local-slurm.sh stop [STATE_DIR]   cancel every job, stop slurmd and slurmctld (munged only if
#                                                  start started it); nothing of ours is left running
#        install/local-slurm.sh status [STATE_DIR] sinfo and squeue
# STATE_DIR (default /tmp/aloe-slurm, or $ALOE_SLURM_DIR) holds the state, spool, pid and log files.
# The cluster: one node (this host: its CPUs, its memory less 5%), one partition 'debug' (Default, MaxTime
# INFINITE), select/cons_tres with CR_Core_Memory (a job's --mem is honoured), jobs killed at their own --time
# (OverTimeLimit=0, KillWait=5 s; slurmctld checks time limits every 30 s, so a job ends, state TIMEOUT, up to
# ~35 s after its limit: a job of --time=00:01:00 ran 75-82 s here).
# slurm.conf: /etc/slurm/slurm.conf when root and that file is absent or ours (then sbatch, squeue and
# dask-jobqueue need nothing set); otherwise STATE_DIR/slurm.conf and clients need SLURM_CONF set to it.
# start and status end with key=value lines for scripts (tests/slurm_cluster.py): partition, node, cpus,
# cores, memory_mb, slurm_conf, state_dir, started (yes: this call started the daemons).
# Daemons run as root (root, else through sudo); exits nonzero with a one-line message when neither is possible.
set -eu

PARTITION=debug
MARKER="# written by aloe install/local-slurm.sh"
COMMAND=${1:-}
STATE_DIR=${2:-${ALOE_SLURM_DIR:-/tmp/aloe-slurm}}
# Daemons and Debian tools live in sbin, which a non-root PATH may lack.
PATH=$PATH:/usr/sbin:/sbin
export PATH

die() {
    echo "error: $*" >&2
    exit 1
}

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    SUDO="none"
fi

need_root() {
    [ "$SUDO" != none ] || die "local-slurm.sh $COMMAND needs root or passwordless sudo (it runs the Slurm daemons)"
}

# slurm.conf: the system one when root can own it, else the state folder's.
conf_path() {
    if [ "$(id -u)" -eq 0 ] && { [ ! -e /etc/slurm/slurm.conf ] || grep -qF "$MARKER" /etc/slurm/slurm.conf; }; then
        echo /etc/slurm/slurm.conf
    else
        echo "$STATE_DIR/slurm.conf"
    fi
}

# pid_alive FILE: the process whose pid FILE holds is running.
pid_alive() {
    [ -s "$1" ] && ps -p "$(cat "$1")" >/dev/null 2>&1
}

# as_root COMMAND...: run a Slurm client as root (sudo drops SLURM_CONF from the environment: pass it on).
as_root() {
    $SUDO_RUN env SLURM_CONF="$CONF" "$@"
}

munge_works() {
    command -v munge >/dev/null 2>&1 && munge -n 2>/dev/null | unmunge >/dev/null 2>&1
}

node_state() {
    sinfo --noheader --nodes="$NODE" --format=%T 2>/dev/null | head -n 1 | tr -d '*~#!%$@^-'
}

report() {
    # $1: yes when this call started the daemons
    cpus=$(sed -n "s/^NodeName=$NODE .*CPUs=\([0-9]*\).*/\1/p" "$CONF")
    memory=$(sed -n "s/^NodeName=$NODE .*RealMemory=\([0-9]*\).*/\1/p" "$CONF")
    cores=$(sed -n "s/^NodeName=$NODE .*Boards=\([0-9]*\) SocketsPerBoard=\([0-9]*\) CoresPerSocket=\([0-9]*\) .*/\1 \2 \3/p" "$CONF")
    # shellcheck disable=SC2086
    set -- "$1" $cores
    cores=$(($2 * $3 * $4))
    echo "partition=$PARTITION"
    echo "node=$NODE"
    echo "cpus=$cpus"
    echo "cores=$cores"
    echo "memory_mb=$memory"
    echo "slurm_conf=$CONF"
    echo "state_dir=$STATE_DIR"
    echo "started=$1"
}

do_install() {
    missing=""
    command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 && command -v sbatch >/dev/null 2>&1 \
        || missing="slurm-wlm"
    command -v munged >/dev/null 2>&1 || missing="$missing munge"
    if [ -z "$missing" ]; then
        echo "slurm-wlm and munge are installed"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "not a Debian system: install Slurm (slurmctld, slurmd, clients) and munge by hand"
    [ "$SUDO" != none ] || die "Slurm needs the Debian packages:$missing; not root and no sudo: ask an administrator for: apt-get install$missing"
    echo "installing Debian packages for a local Slurm cluster:$missing"
    if ! { $SUDO_RUN apt-get update -q && $SUDO_RUN env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing; }; then
        die "could not install:$missing (apt-get install$missing by hand)"
    fi
}

start_munge() {
    if munge_works; then
        echo "munged: already running"
        return 0
    fi
    command -v munged >/dev/null 2>&1 || die "munged not found: run install/local-slurm.sh install"
    key=/etc/munge/munge.key
    if ! $SUDO_RUN test -s "$key"; then
        $SUDO_RUN mkdir -p /etc/munge
        if command -v mungekey >/dev/null 2>&1; then
            $SUDO_RUN mungekey --create --keyfile="$key"
        else
            $SUDO_RUN dd if=/dev/urandom of="$key" bs=1024 count=1 2>/dev/null
        fi
    fi
    if id munge >/dev/null 2>&1; then
        $SUDO_RUN mkdir -p /run/munge /var/lib/munge /var/log/munge
        $SUDO_RUN chown munge:munge /etc/munge "$key" /run/munge /var/lib/munge /var/log/munge
        $SUDO_RUN chmod 0400 "$key"
        $SUDO_RUN chmod 0755 /run/munge
        $SUDO_RUN runuser -u munge -- munged
    else
        $SUDO_RUN mkdir -p /run/munge
        $SUDO_RUN chmod 0400 "$key"
        $SUDO_RUN munged --force
    fi
    $SUDO_RUN touch "$STATE_DIR/munged.ours"
    i=0
    until munge_works; do
        i=$((i + 1))
        [ $i -le 20 ] || die "munged does not answer (see /var/log/munge/munged.log)"
        sleep 0.5
    done
    echo "munged: started"
}

write_conf() {
    hw=$(slurmd -C 2>/dev/null | head -n 1)
    case $hw in NodeName=*) ;; *) die "slurmd -C gave no node line (is slurmd installed? run install/local-slurm.sh install)" ;; esac
    field() { echo "$hw" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
    cpus=$(field CPUs)
    real=$(field RealMemory)
    # Leave the system a little: a node whose RealMemory exceeds what slurmd finds is drained.
    memory=$((real - real / 20))
    [ "$memory" -gt 0 ] || memory=$real
    def_mem=$((memory / cpus))
    tmp="$STATE_DIR/slurm.conf.new"
    $SUDO_RUN tee "$tmp" >/dev/null <<EOF
$MARKER: a single-node test cluster ($(date -u +%Y-%m-%dT%H:%M:%SZ)).
ClusterName=aloe
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: processes are tracked by their parent chain, tasks are not bound.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
SchedulerType=sched/backfill
# Cores and memory are consumable: jobs share the node, each within its --cpus-per-task / --mem.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def_mem
# A job ends at its own --time: no grace, SIGKILL 5 s after SIGTERM.
OverTimeLimit=0
KillWait=5
InactiveLimit=0
MinJobAge=300
SlurmctldTimeout=10
SlurmdTimeout=30
MessageTimeout=10
ReturnToService=2
$(field NodeName | sed 's/^/NodeName=/') CPUs=$cpus Boards=$(field Boards) SocketsPerBoard=$(field SocketsPerBoard) CoresPerSocket=$(field CoresPerSocket) ThreadsPerCore=$(field ThreadsPerCore) RealMemory=$memory State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    $SUDO_RUN mkdir -p "$(dirname "$CONF")"
    $SUDO_RUN chmod 0644 "$tmp"
    $SUDO_RUN mv "$tmp" "$CONF"
}

do_start() {
    need_root
    command -v slurmctld >/dev/null 2>&1 || die "slurmctld not found: run install/local-slurm.sh install"
    if pid_alive "$STATE_DIR/slurmctld.pid" && pid_alive "$STATE_DIR/slurmd.pid" && [ -f "$CONF" ]; then
        echo "Slurm is already running ($STATE_DIR): node $NODE $(node_state)"
        report no
        return 0
    fi
    t0=$(date +%s)
    $SUDO_RUN mkdir -p "$STATE_DIR/state" "$STATE_DIR/spool" "$STATE_DIR/log"
    $SUDO_RUN chmod 0755 "$STATE_DIR"
    start_munge
    # A half-running cluster (one daemon died): start both afresh.
    for daemon in slurmd slurmctld; do
        if pid_alive "$STATE_DIR/$daemon.pid"; then
            $SUDO_RUN kill "$(cat "$STATE_DIR/$daemon.pid")" 2>/dev/null || true
            sleep 1
        fi
    done
    write_conf
    # -c: a clean start (no jobs or node states kept from an earlier cluster in this folder).
    $SUDO_RUN slurmctld -c -f "$CONF" || die "slurmctld did not start (see $STATE_DIR/log/slurmctld.log)"
    $SUDO_RUN slurmd -f "$CONF" || die "slurmd did not start (see $STATE_DIR/log/slurmd.log)"
    i=0
    state=""
    while :; do
        state=$(node_state)
        [ "$state" = idle ] && break
        case $state in
            down | drain* | drained | fail*)
                [ $i -ge 10 ] && as_root scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
        esac
        i=$((i + 1))
        [ $i -le 120 ] || die "node $NODE is not idle after 60 s (state '${state:-no answer}'); see $STATE_DIR/log/slurmctld.log and $STATE_DIR/log/slurmd.log"
        sleep 0.5
    done
    echo "Slurm started in $(($(date +%s) - t0)) s: node $NODE idle, partition $PARTITION"
    if [ "$CONF" != /etc/slurm/slurm.conf ]; then
        echo "clients need: export SLURM_CONF=$CONF"
    fi
    report yes
}

do_stop() {
    if [ "$SUDO" = none ]; then
        die "local-slurm.sh stop needs root or passwordless sudo"
    fi
    if [ -f "$CONF" ] && pid_alive "$STATE_DIR/slurmctld.pid"; then
        jobs=$(squeue --noheader --format=%A 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            # shellcheck disable=SC2086
            as_root scancel $jobs 2>/dev/null || true
            i=0
            while [ -n "$(squeue --noheader --format=%A 2>/dev/null || true)" ] && [ $i -lt 30 ]; do
                i=$((i + 1))
                sleep 0.5
            done
        fi
        as_root scontrol shutdown >/dev/null 2>&1 || true
    fi
    for daemon in slurmd slurmctld; do
        pidfile="$STATE_DIR/$daemon.pid"
        [ -s "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        i=0
        while ps -p "$pid" >/dev/null 2>&1; do
            i=$((i + 1))
            if [ $i -eq 20 ]; then
                $SUDO_RUN kill "$pid" 2>/dev/null || true
            elif [ $i -ge 40 ]; then
                $SUDO_RUN kill -9 "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.5
        done
        $SUDO_RUN rm -f "$pidfile"
    done
    # Job steps of jobs that did not end in time outlive slurmd: say so (they are not ours to guess at).
    steps=$(pgrep -x slurmstepd 2>/dev/null | tr '\n' ' ' || true)
    [ -z "$steps" ] || echo "warning: slurmstepd processes still running: $steps(see $STATE_DIR/log/slurmd.log)" >&2
    if [ -e "$STATE_DIR/munged.ours" ]; then
        pidfile=/run/munge/munged.pid
        if [ -s "$pidfile" ]; then
            pid=$(cat "$pidfile")
            $SUDO_RUN kill "$pid" 2>/dev/null || true
            i=0
            while ps -p "$pid" >/dev/null 2>&1 && [ $i -lt 20 ]; do
                i=$((i + 1))
                sleep 0.25
            done
        fi
        $SUDO_RUN rm -f "$STATE_DIR/munged.ours"
        echo "Slurm and munged stopped"
    else
        echo "Slurm stopped"
    fi
}

do_status() {
    if ! pid_alive "$STATE_DIR/slurmctld.pid"; then
        echo "Slurm is not running ($STATE_DIR)"
        return 1
    fi
    sinfo
    squeue
    if pid_alive "$STATE_DIR/slurmd.pid"; then
        report no
    fi
}

SUDO_RUN=$SUDO
[ "$SUDO_RUN" = none ] && SUDO_RUN=""
NODE=$(hostname -s)
CONF=$(conf_path)
SLURM_CONF=$CONF
export SLURM_CONF

case $COMMAND in
    install) do_install ;;
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    *)
        echo "usage: install/local-slurm.sh install | start [STATE_DIR] | stop [STATE_DIR] | status [STATE_DIR]" >&2
        exit 2
        ;;
esac
