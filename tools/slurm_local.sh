#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for the runner's Slurm tests (and for trying --slurm).
#
#   tools/slurm_local.sh up        # start munged, slurmctld, slurmd (idempotent); prints the SLURM_CONF line
#   tools/slurm_local.sh down      # cancel every job, stop the three daemons it started (idempotent)
#   tools/slurm_local.sh status    # up | down, and sinfo when up
#   tools/slurm_local.sh install   # apt-get install slurm-wlm munge (root, Debian/Ubuntu)
#
# Runs as root. Everything lives under $SLURM_LOCAL_DIR (default /tmp/slurm-local): its own munge key and
# socket, slurm.conf, state, spool, logs and pid files; nothing under /etc is changed, so a system Slurm or
# munge, if any, is left alone. Clients find this cluster through SLURM_CONF=$SLURM_LOCAL_DIR/slurm.conf.
# Environment: SLURM_LOCAL_DIR, SLURM_LOCAL_CPUS (default: this machine's), SLURM_LOCAL_PORT (slurmctld's
# port, default 16817; slurmd uses the next one), SLURM_LOCAL_WAIT (seconds to wait for the node, default 40).
# Exit codes: 0 done, 1 could not (one line on stderr says why), 2 bad usage.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
PORT=${SLURM_LOCAL_PORT:-16817}
WAIT=${SLURM_LOCAL_WAIT:-40}
CONF=$DIR/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket
export SLURM_CONF=$CONF

die() { printf 'slurm_local.sh: %s\n' "$*" >&2; exit 1; }
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }  # alive PIDFILE

need_root() { ((EUID == 0)) || die "run as root (slurmd and munged's user switch need it)"; }

have_slurm() {
    local b
    for b in slurmctld slurmd munged mungekey sbatch squeue scontrol sinfo; do
        command -v "$b" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin command -v "$b" >/dev/null 2>&1 || return 1
    done
}

cmd_install() {
    need_root
    have_slurm && { echo "slurm and munge are installed"; return 0; }
    command -v apt-get >/dev/null 2>&1 || die "no apt-get here: install Slurm (slurmctld, slurmd, sbatch) and munge by hand"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } >"$DIR.install.log" 2>&1 \
        || die "apt-get install slurm-wlm munge failed; see $DIR.install.log"
    have_slurm || die "slurm-wlm installed but its programs are not on PATH"
    echo "installed slurm-wlm and munge"
}

node_ready() {  # the node answers and takes jobs
    local st
    st=$(sinfo -h -N -o '%t' 2>/dev/null | head -n 1) || return 1
    [[ $st == idle* || $st == mix* || $st == alloc* ]]
}

write_config() {
    local host cpus mem
    host=$(hostname -s)
    cpus=${SLURM_LOCAL_CPUS:-$(nproc)}
    # slurmd -C reports this machine's memory; declare a little less so the node is never refused for it
    mem=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n 1)
    mem=$(( ${mem:-2000} * 9 / 10 ))
    mkdir -p "$DIR"/{state,spool,log}
    cat >"$CONF.tmp" <<EOF
# written by tools/slurm_local.sh: a single-node test cluster
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
# no slurmdbd: sacct has no database; finished jobs stay visible to squeue/scontrol for MinJobAge seconds
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
MinJobAge=600
# seconds between the SIGTERM of scancel or a time limit and the SIGKILL
KillWait=5
OverTimeLimit=0
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
# jobs in "urgent" pre-empt jobs in "debug" (requeued) and in "scavenger" (cancelled) when they need their
# CPUs: both kinds of pre-emption can be tested
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=scavenger Nodes=$host MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=CANCEL
PartitionName=urgent Nodes=$host MaxTime=INFINITE State=UP PriorityTier=10
EOF
    mv "$CONF.tmp" "$CONF"
}

start_munge() {
    alive "$DIR/munge/munged.pid" && return 0
    mkdir -p "$DIR/munge"
    chown munge: "$DIR/munge"
    chmod 755 "$DIR/munge"  # the socket must be reachable by every user
    if [[ ! -s $DIR/munge/munge.key ]]; then
        mungekey --create --keyfile="$DIR/munge/munge.key" --force >/dev/null 2>&1 \
            || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
        chown munge: "$DIR/munge/munge.key"
        chmod 400 "$DIR/munge/munge.key"
    fi
    runuser -u munge -- munged --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCKET" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
        --seed-file="$DIR/munge/munged.seed" \
        || die "munged did not start; see $DIR/munge/munged.log"
}

cmd_up() {
    need_root
    have_slurm || die "Slurm is not installed (tools/slurm_local.sh install, or apt-get install slurm-wlm munge)"
    export PATH=$PATH:/usr/sbin
    if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && alive "$DIR/munge/munged.pid" && node_ready; then
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    mkdir -p "$DIR"
    [[ -f $CONF ]] || write_config
    start_munge
    # -i: ignore saved state that does not match the config; slurmd -b: report a fresh boot
    alive "$DIR/slurmctld.pid" || slurmctld -i >>"$DIR/log/slurmctld.start" 2>&1 \
        || die "slurmctld did not start; see $DIR/log/slurmctld.log"
    alive "$DIR/slurmd.pid" || slurmd -b >>"$DIR/log/slurmd.start" 2>&1 \
        || die "slurmd did not start; see $DIR/log/slurmd.log"
    local t=0
    until node_ready; do
        ((t++ < WAIT * 5)) || die "the node did not become idle within ${WAIT}s; see $DIR/log/slurmctld.log and slurmd.log"
        # a node left DOWN by an earlier unclean stop comes back with a resume
        if ((t % 10 == 0)); then scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true; fi
        sleep 0.2
    done
    echo "export SLURM_CONF=$CONF"
}

stop_pidfile() {  # stop_pidfile FILE NAME: TERM, up to 10 s, then KILL
    local f=$1 pid i
    alive "$f" || { rm -f "$f"; return 0; }
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { echo "slurm_local.sh: $2 ($pid) ignored SIGTERM; killing it" >&2; kill -KILL "$pid" 2>/dev/null || true; }
    rm -f "$f"
}

cmd_down() {
    export PATH=$PATH:/usr/sbin
    if alive "$DIR/slurmctld.pid" && [[ -f $CONF ]]; then
        # jobs' processes belong to slurmstepd, not to the daemons: end them first
        local ids i
        ids=$(squeue -h -o %i 2>/dev/null || true)
        if [[ -n $ids ]]; then
            # shellcheck disable=SC2086  # job ids, one word each
            scancel $ids 2>/dev/null || true
            for ((i = 0; i < 100; i++)); do
                [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
                sleep 0.2
            done
        fi
    fi
    stop_pidfile "$DIR/slurmd.pid" slurmd
    stop_pidfile "$DIR/slurmctld.pid" slurmctld
    stop_pidfile "$DIR/munge/munged.pid" munged
    echo "slurm_local: down"
}

cmd_status() {
    export PATH=$PATH:/usr/sbin
    if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && node_ready; then
        echo "up (SLURM_CONF=$CONF)"
        sinfo
    else
        echo down
        return 1
    fi
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    install) mkdir -p "$(dirname "$DIR")"; cmd_install ;;
    *) echo "usage: tools/slurm_local.sh up|down|status|install (see the top of this file)" >&2; exit 2 ;;
esac
