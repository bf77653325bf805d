#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for tests/test_slurm.py and CI (as root; no
# systemd, no cgroups). Debian/Ubuntu: the packages are installed when missing.
#
#   scripts/local_slurm.sh up                    # munged, MariaDB, slurmdbd, slurmctld, slurmd
#   scripts/local_slurm.sh up --no-accounting    # the same without slurmdbd (sacct has nothing)
#   scripts/local_slurm.sh down                  # cancel every job, stop what `up` started
#   scripts/local_slurm.sh status                # sinfo, and whether accounting is on
#
# `up` is idempotent: what runs already is left alone; `up` with the other accounting setting
# restarts slurmctld and slurmd only (jobs survive). Environment:
#   BATCHSCALE_SLURM_DIR         configs, state, logs, pid files (default /tmp/batchscale-slurm)
#   BATCHSCALE_SLURM_ACCOUNTING  0: as --no-accounting
# Commands find the cluster through SLURM_CONF=$BATCHSCALE_SLURM_DIR/etc/slurm.conf; `up` also
# links /etc/slurm/slurm.conf to it when that file does not exist (and `down` removes the link).
# The cluster `batchscale` has one node (this host, `slurmd -C`'s CPUs, 90% of its memory) in
# one partition `cpu`. AuthInfo=cred_expire=10: a requeued job waits ~11 s (not 121 s) before
# it may start again. MariaDB listens on its default socket only (--skip-networking).
set -euo pipefail

DIR=${BATCHSCALE_SLURM_DIR:-/tmp/batchscale-slurm}
ACCOUNTING=${BATCHSCALE_SLURM_ACCOUNTING:-1}
CLUSTER=batchscale
HOST=$(hostname -s)
DB_SOCKET=/run/mysqld/mysqld.sock   # libmariadb's default: slurmdbd has no socket setting
DB_PASSWORD=batchscale-local-slurm  # the database accepts no network connection
export SLURM_CONF=$DIR/etc/slurm.conf

say() { echo "local_slurm: $*" >&2; }
die() { say "$*"; exit 1; }

alive() {  # alive PIDFILE: the process it names runs
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop_pid() {  # stop_pid NAME PIDFILE: SIGTERM, up to 30 s, then SIGKILL
    local name=$1 file=$2 pid
    alive "$file" || { rm -f "$file"; return 0; }
    pid=$(cat "$file")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then say "$name ($pid) did not stop: SIGKILL"; kill -9 "$pid"; fi
    rm -f "$file"
    say "stopped $name ($pid)"
}

wait_for() {  # wait_for SECONDS DESCRIPTION LOG COMMAND...: until COMMAND succeeds
    local seconds=$1 what=$2 log=$3; shift 3
    for _ in $(seq $((seconds * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
    [[ -f $log ]] && tail -n 20 "$log" >&2
    die "$what did not come up within $seconds s (log: $log)"
}

install_packages() {
    local missing=0 tool
    for tool in slurmctld slurmd slurmdbd sacctmgr munged mariadbd mariadb-install-db; do
        command -v "$tool" >/dev/null 2>&1 || [[ -x /usr/sbin/$tool ]] || missing=1
    done
    ((missing)) || return 0
    command -v apt-get >/dev/null || die "slurm, munge or mariadb missing and no apt-get here"
    say "installing slurm-wlm slurmdbd munge mariadb-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server >/dev/null
}

munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    munge_works && return 0
    install -d -o munge -g munge -m 755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    fi
    runuser -u munge -- /usr/sbin/munged
    cp /run/munge/munged.pid "$DIR/run/munged.pid"  # ours: `down` stops it
    wait_for 20 munged /var/log/munge/munged.log munge_works
    say "started munged"
}

db() { mariadb --socket="$DB_SOCKET" -u root "$@"; }

start_mariadb() {
    if ! db -e 'select 1' >/dev/null 2>&1; then
        if [[ ! -d $DIR/mysql/mysql ]]; then
            mariadb-install-db --user=root --datadir="$DIR/mysql" --skip-test-db \
                --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1 \
                || die "mariadb-install-db failed (log: $DIR/log/mariadb-install.log)"
        fi
        install -d -m 755 "$(dirname "$DB_SOCKET")"
        setsid /usr/sbin/mariadbd --user=root --datadir="$DIR/mysql" --socket="$DB_SOCKET" \
            --skip-networking --pid-file="$DIR/run/mariadb.pid" \
            --log-error="$DIR/log/mariadb.log" </dev/null >/dev/null 2>&1 &
        wait_for 60 MariaDB "$DIR/log/mariadb.log" db -e 'select 1'
        say "started MariaDB on $DB_SOCKET (no network)"
    fi
    db <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

write_configs() {  # slurm.conf (into $1) and slurmdbd.conf
    local node memory storage
    node=$(slurmd -C | head -n 1 | sed 's/ RealMemory=[0-9]*//')
    memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    if [[ $ACCOUNTING == 1 ]]; then
        storage="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations"
    else
        storage="AccountingStorageType=accounting_storage/none"
    fi
    cat >"$1" <<EOF
# written by scripts/local_slurm.sh (accounting=$ACCOUNTING)
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
JobAcctGatherType=jobacct_gather/none
$storage
JobCompType=jobcomp/none
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
$node RealMemory=$memory State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$DIR/etc/slurmdbd.conf.new" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DB_PASSWORD
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
EOF
    chmod 600 "$DIR/etc/slurmdbd.conf.new"
    mv "$DIR/etc/slurmdbd.conf.new" "$DIR/etc/slurmdbd.conf"
}

start_slurmdbd() {
    if ! alive "$DIR/run/slurmdbd.pid"; then
        slurmdbd
        wait_for 60 slurmdbd "$DIR/log/slurmdbd.log" sacctmgr -n show cluster
        say "started slurmdbd"
    fi
    if [[ -z $(sacctmgr -n -P show cluster "$CLUSTER" format=cluster) ]]; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    if [[ -z $(sacctmgr -n -P show assoc cluster="$CLUSTER" user=root format=user) ]]; then
        sacctmgr -i add account root cluster="$CLUSTER" >/dev/null 2>&1 || true
        sacctmgr -i add user root account=root cluster="$CLUSTER" >/dev/null
    fi
}

node_ready() {  # the node takes jobs: idle, or busy with some
    local state
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null) || return 1
    [[ $state =~ ^(idle|mixed|allocated|completing)$ ]]
}

up() {
    [[ $(id -u) == 0 ]] || die "up needs root (it starts munged, MariaDB and the SLURM daemons)"
    install_packages
    mkdir -p "$DIR"/{etc,state,spool,log,run}
    chmod 755 "$DIR"
    start_munge
    local restart=0
    write_configs "$DIR/etc/slurm.conf.new"
    if [[ -f $SLURM_CONF ]] && ! cmp -s "$SLURM_CONF" "$DIR/etc/slurm.conf.new"; then
        restart=1  # the other accounting setting: slurmctld and slurmd read it at start only
    fi
    mv "$DIR/etc/slurm.conf.new" "$SLURM_CONF"  # before sacctmgr: it reads slurm.conf
    if [[ ! -e /etc/slurm/slurm.conf ]]; then
        mkdir -p /etc/slurm
        ln -s "$SLURM_CONF" /etc/slurm/slurm.conf
    fi
    if [[ $ACCOUNTING == 1 ]]; then
        start_mariadb
        start_slurmdbd
    fi
    if ((restart)); then
        stop_pid slurmd "$DIR/run/slurmd.pid"
        stop_pid slurmctld "$DIR/run/slurmctld.pid"
    fi
    if ! alive "$DIR/run/slurmctld.pid"; then
        slurmctld
        wait_for 60 slurmctld "$DIR/log/slurmctld.log" scontrol ping
        say "started slurmctld"
    fi
    if ! alive "$DIR/run/slurmd.pid"; then
        slurmd
        say "started slurmd"
    fi
    wait_for 60 "node $HOST" "$DIR/log/slurmd.log" node_ready
    say "up: $(sinfo -h -o '%P %D %T %C' | head -n 1) (partition nodes state cpus A/I/O/T);" \
        "accounting $([[ $ACCOUNTING == 1 ]] && echo on || echo off)"
    echo "export SLURM_CONF=$SLURM_CONF"
}

down() {
    if alive "$DIR/run/slurmctld.pid"; then
        scancel --full --quiet --user=root 2>/dev/null || true  # this cluster's jobs only
        for _ in $(seq 60); do
            [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
            sleep 0.5
        done
    fi
    stop_pid slurmd "$DIR/run/slurmd.pid"
    stop_pid slurmctld "$DIR/run/slurmctld.pid"
    stop_pid slurmdbd "$DIR/run/slurmdbd.pid"
    stop_pid MariaDB "$DIR/run/mariadb.pid"
    stop_pid munged "$DIR/run/munged.pid"
    if [[ $(readlink /etc/slurm/slurm.conf 2>/dev/null) == "$SLURM_CONF" ]]; then
        rm -f /etc/slurm/slurm.conf
    fi
}

status() {
    alive "$DIR/run/slurmctld.pid" || { echo "down"; return 1; }
    sinfo
    scontrol show config | grep -E '^AccountingStorageType'
}

for arg in "${@:2}"; do
    case $arg in
        --no-accounting) ACCOUNTING=0 ;;
        *) die "unknown option $arg" ;;
    esac
done
case ${1:-} in
    up) up ;;
    down) down ;;
    status) status ;;
    *) die "usage: $0 up [--no-accounting] | down | status" ;;
esac
