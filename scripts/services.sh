#!/usr/bin/env bash
# Real services for the scale-out tests (tests/scaleout, pytest marker `services`) and for trying a
# cluster set-up by hand: PostgreSQL, RabbitMQ, a one-node Slurm cluster (munge + slurmctld + slurmd)
# and an SSH server on 127.0.0.1, all from Debian's packages. Needs root (apt-get, /etc).
#
#   bash scripts/services.sh start    install what is missing, start what is not running (idempotent)
#   bash scripts/services.sh stop     stop the services this script started (not ones it found running)
#   bash scripts/services.sh status   one line per service
#
# What it writes outside the repository (nothing else):
#   /etc/slurm/slurm.conf, /etc/slurm/gres.conf   the one-node cluster `hpcai`: node `localhost` with this
#                                                 machine's CPUs and memory, partition `debug`, one stand-in
#                                                 GPU GRES (no device) so `--gres=gpu:1` can be scheduled
#   /var/spool/slurmctld, /var/spool/slurmd       Slurm state; /var/log/slurm/*.log its logs and
#                                                 /var/log/slurm/jobcomp.log one line per finished job
#   /etc/rabbitmq/rabbitmq.conf, advanced.config  listen on 127.0.0.1 only; no consumer timeout (AiiDA's advice)
#   /etc/rabbitmq/rabbitmq-env.conf               epmd and Erlang distribution on 127.0.0.1, no busy-waiting
#   /etc/locale.gen + locale-gen                  the en_US.UTF-8 locale AiiDA's PostgreSQL databases use
#   PostgreSQL role `root` (superuser, peer login) so that root's `verdi presto --use-postgres` can create
#   a database and a user for a profile, as Debian's `createuser --superuser $USER` advice does
#   /root/.ssh/hpcai_services_ed25519{,.pub}      the key of the SSH computer, in authorized_keys;
#                                                 127.0.0.1's host key in known_hosts; `Host hpcai-services-ssh`
#                                                 (127.0.0.1 as root with that key) in /root/.ssh/config
#   /run/hpcai-services/                          marks of the services this script started (for `stop`)
set -euo pipefail

STATE_DIR=/run/hpcai-services
SSH_KEY=/root/.ssh/hpcai_services_ed25519
SSH_ALIAS=hpcai-services-ssh
PG_VERSION=15
PACKAGES=(locales postgresql rabbitmq-server munge slurm-wlm openssh-server)

log() { echo "services: $*"; }

install_packages() {
    local missing=()
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

mark_started() { mkdir -p "$STATE_DIR" && touch "$STATE_DIR/$1"; }

# -- PostgreSQL -------------------------------------------------------------------------------------
postgres_running() { pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VERSION" '$1 == v && $2 == "main"' | grep -q online; }

start_postgres() {
    # AiiDA creates a profile's database with LC_COLLATE/LC_CTYPE en_US.UTF-8: that locale must exist
    if ! locale -a | grep -qi '^en_US\.utf-\?8$'; then
        sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' /etc/locale.gen
        grep -q '^en_US.UTF-8 UTF-8' /etc/locale.gen || echo 'en_US.UTF-8 UTF-8' >>/etc/locale.gen
        locale-gen >/dev/null
        # a running server only sees the new locale after a restart
        if postgres_running; then pg_ctlcluster "$PG_VERSION" main restart; fi
    fi
    if ! postgres_running; then
        pg_ctlcluster "$PG_VERSION" main start
        mark_started postgresql
    fi
    su postgres -c "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname = 'root'\"" | grep -q 1 ||
        su postgres -c 'createuser --superuser root'
    log "postgresql $PG_VERSION running on 127.0.0.1:5432 (role root for peer login)"
}

# -- RabbitMQ ---------------------------------------------------------------------------------------
rabbitmq_running() { rabbitmqctl -q status >/dev/null 2>&1; }

start_rabbitmq() {
    if ! rabbitmq_running; then
        cat >/etc/rabbitmq/rabbitmq.conf <<'EOF'
# written by aiida-hpcai scripts/services.sh
listeners.tcp.default = 127.0.0.1:5672
EOF
        # AiiDA's advice: a process may hold its task far longer than RabbitMQ's default 30 minutes.
        echo '[{rabbit, [{consumer_timeout, undefined}]}].' >/etc/rabbitmq/advanced.config
        cat >/etc/rabbitmq/rabbitmq-env.conf <<'EOF'
# written by aiida-hpcai scripts/services.sh: loopback only, and no scheduler busy-waiting (it would take
# CPU from the jobs on a small machine)
export ERL_EPMD_ADDRESS=127.0.0.1
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} +sbwt none +sbwtdcpu none +sbwtdio none"
EOF
        rabbitmq-server -detached
        mark_started rabbitmq
    fi
    # the Erlang node registers a few seconds after -detached returns; await_startup needs it registered
    local i
    for i in $(seq 60); do
        rabbitmqctl -q ping >/dev/null 2>&1 && break
        [ "$i" -eq 60 ] && { log 'rabbitmq did not start in 60 s, see /var/log/rabbitmq/'; exit 1; }
        sleep 1
    done
    rabbitmqctl -q await_startup --timeout 120
    log 'rabbitmq running on 127.0.0.1:5672'
}

# -- munge + Slurm ----------------------------------------------------------------------------------
pidfile() { if [ "$1" = munge ]; then echo /run/munge/munged.pid; else echo "/run/$1.pid"; fi; }
daemon_running() { [ -f "$(pidfile "$1")" ] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }

write_slurm_conf() {
    local hardware
    # CPUs, sockets, cores and memory as slurmd itself measures them, so the node is not drained for a mismatch
    hardware=$(slurmd -C | sed -n 's/^NodeName=[^ ]* \(.*RealMemory=[0-9]*\).*/\1/p')
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    cat >/etc/slurm/slurm.conf <<EOF
# written by aiida-hpcai scripts/services.sh: a one-node cluster on this machine
ClusterName=hpcai
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
ReturnToService=2
MinJobAge=600
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 $hardware Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    echo 'NodeName=localhost Name=gpu File=/dev/null' >/etc/slurm/gres.conf
}

start_slurm() {
    if ! daemon_running munge; then
        mkdir -p /run/munge && chown munge:munge /run/munge
        runuser -u munge -- /usr/sbin/munged
        mark_started munge
    fi
    if ! daemon_running slurmctld; then
        write_slurm_conf
        slurmctld
        mark_started slurmctld
    fi
    if ! daemon_running slurmd; then
        slurmd -N localhost
        mark_started slurmd
    fi
    local i
    for i in $(seq 60); do
        case "$(sinfo -h -N -o '%T' 2>/dev/null)" in
            idle | mixed | allocated) break ;;
            # a reason saved by an earlier start (another configuration) keeps the node drained: it is ours
            drained* | down* | draining*) scontrol update nodename=localhost state=resume 2>/dev/null || true ;;
        esac
        [ "$i" -eq 60 ] && { log 'slurm node not idle after 60 s:'; sinfo -N || true; exit 1; }
        sleep 1
    done
    log "slurm cluster hpcai: $(sinfo -h -N -o '%N %P %T %c CPUs %m MB')"
}

# -- SSH on 127.0.0.1 -------------------------------------------------------------------------------
sshd_running() { [ -f /run/sshd.pid ] && kill -0 "$(cat /run/sshd.pid)" 2>/dev/null; }

start_ssh() {
    mkdir -p /root/.ssh /run/sshd && chmod 700 /root/.ssh
    [ -f "$SSH_KEY" ] || ssh-keygen -q -t ed25519 -N '' -C 'aiida-hpcai services' -f "$SSH_KEY"
    touch /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys
    grep -qF "$(cat "$SSH_KEY.pub")" /root/.ssh/authorized_keys || cat "$SSH_KEY.pub" >>/root/.ssh/authorized_keys
    if ! sshd_running; then
        /usr/sbin/sshd -o ListenAddress=127.0.0.1 -o PermitRootLogin=prohibit-password -o PasswordAuthentication=no
        mark_started sshd
    fi
    # an alias, as users name a cluster in their SSH config (AiiDA's core.ssh_async reads it)
    touch /root/.ssh/config && chmod 600 /root/.ssh/config
    grep -q "^Host $SSH_ALIAS\$" /root/.ssh/config || cat >>/root/.ssh/config <<EOF

# written by aiida-hpcai scripts/services.sh
Host $SSH_ALIAS
    HostName 127.0.0.1
    User root
    IdentityFile $SSH_KEY
    IdentitiesOnly yes
EOF
    touch /root/.ssh/known_hosts
    if ! ssh-keygen -F 127.0.0.1 -f /root/.ssh/known_hosts >/dev/null; then
        ssh-keyscan -t ed25519 127.0.0.1 2>/dev/null >>/root/.ssh/known_hosts
    fi
    ssh -o BatchMode=yes "$SSH_ALIAS" true
    log "sshd on 127.0.0.1:22, key $SSH_KEY, ssh alias $SSH_ALIAS"
}

# -- stop / status ----------------------------------------------------------------------------------
stop_services() {
    [ -d "$STATE_DIR" ] || { log 'nothing started by this script'; return 0; }
    # reverse order of start: the scheduler before munge, which it authenticates with
    if [ -f "$STATE_DIR/sshd" ]; then kill "$(cat /run/sshd.pid)" 2>/dev/null || true; fi
    local name
    for name in slurmd slurmctld munge; do
        if [ -f "$STATE_DIR/$name" ]; then kill "$(cat "$(pidfile "$name")")" 2>/dev/null || true; fi
    done
    if [ -f "$STATE_DIR/rabbitmq" ]; then rabbitmqctl -q shutdown >/dev/null 2>&1 || true; fi
    if [ -f "$STATE_DIR/postgresql" ]; then pg_ctlcluster "$PG_VERSION" main stop || true; fi
    log "stopped: $(ls "$STATE_DIR" | tr '\n' ' ')"
    rm -rf "$STATE_DIR"
}

status() {
    local state
    state() { if "$@" >/dev/null 2>&1; then echo running; else echo stopped; fi; }
    echo "postgresql $(state postgres_running)"
    echo "rabbitmq   $(state rabbitmq_running)"
    echo "munge      $(state daemon_running munge)"
    echo "slurmctld  $(state daemon_running slurmctld)"
    echo "slurmd     $(state daemon_running slurmd)"
    echo "sshd       $(state sshd_running)"
}

case "${1:-start}" in
    start)
        install_packages
        start_postgres
        start_rabbitmq
        start_slurm
        start_ssh
        ;;
    stop) stop_services ;;
    status) status ;;
    *)
        echo "usage: $0 [start|stop|status]" >&2
        exit 2
        ;;
esac
