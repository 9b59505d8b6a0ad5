#!/usr/bin/env bash
# local-slurm.sh start|stop|status — a throwaway single-node Slurm cluster for tests.
#
# Debian 12, run as root, no systemd and no cgroups needed. `start` installs munge and Slurm only
# when they are missing, writes a one-node slurm.conf with fake GPUs, starts munged, slurmctld and
# slurmd, and waits until the node is idle. It is idempotent: a second `start` with the same
# settings leaves the running daemons alone. `stop` ends exactly the daemons this script started,
# by the PIDs in their pid files, never by name.
#
# Environment:
#   LOCAL_SLURM_STATE      state, spool, logs, pid files, fake GPU devices (default /tmp/local-slurm)
#   LOCAL_SLURM_FAKE_GPUS  number of fake GPUs on the node, 0..5 (default 4)
#   LOCAL_SLURM_CPUS       CPUs the node claims (default: the machine's, at least 8)
#   LOCAL_SLURM_MEMORY_MB  memory the node claims (default: 80 % of the machine's, at least 128000)
#
# Why the node may claim more than the machine has: test jobs ask for production-sized resources
# (2 threads, 16 GB) but use a fraction of them. On a 2-core CI machine they would otherwise run
# one at a time, and each costs half a minute of waiting for the executor's status poll (it backs
# off by 10 s per round). Memory is not enforced here (no cgroups), so claiming more is harmless.
#
# Why fake GPUs are character devices: slurmd refuses gres.conf `File=` entries that are regular
# files ("is not a valid character or block device") and then sets no CUDA_VISIBLE_DEVICES. We
# reuse the majors/minors of /dev/null, /dev/zero, ... which every kernel has.
set -euo pipefail

STATE=${LOCAL_SLURM_STATE:-/tmp/local-slurm}
NGPU=${LOCAL_SLURM_FAKE_GPUS:-4}
SLURM_CONF_DIR=/etc/slurm
# Marks the configuration files as ours, so we never overwrite a real cluster's configuration.
MARKER="# written by tests/slurm/local-slurm.sh"
FAKE_GPU_MINORS=(3 5 7 8 9)  # /dev/null, zero, full, random, urandom

die() { echo "local-slurm: $*" >&2; exit 1; }

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
  local missing=()
  command -v munged >/dev/null || [ -x /usr/sbin/munged ] || missing+=(munge)
  [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] || missing+=(slurm-wlm)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "local-slurm: installing ${missing[*]}"
  timeout 120 apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 240 apt-get install -y -qq --no-install-recommends \
    slurm-wlm slurm-client munge >/dev/null
}

# Prints the slurm.conf for this host; gres.conf is written by write_config.
render_slurm_conf() {
  local host=$1 cpus mem machine_mem gres_line="" gres_types=""
  machine_mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  cpus=${LOCAL_SLURM_CPUS:-$(($(nproc) > 8 ? $(nproc) : 8))}
  mem=${LOCAL_SLURM_MEMORY_MB:-$((machine_mem > 128000 ? machine_mem : 128000))}
  if [ "$NGPU" -gt 0 ]; then
    gres_line="Gres=gpu:fake:$NGPU"
    gres_types="GresTypes=gpu"
  fi
  cat <<EOF
$MARKER
ClusterName=localcluster
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
# Trust the CPUs and memory below even where the machine has less (see the top of this script).
SlurmdParameters=config_overrides
ReturnToService=2
$gres_types
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue this long. The Snakemake plugin's squeue status mode needs
# MinJobAge >= 3 x its first-poll delay, and the tests read finished jobs with scontrol.
MinJobAge=3600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem $gres_line State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

render_gres_conf() {
  local host=$1
  echo "$MARKER"
  echo "NodeName=$host Name=gpu Type=fake File=$STATE/gpu[0-$((NGPU - 1))]"
}

# Writes $2 to $1 unless $1 is a configuration that this script did not write.
write_owned_file() {
  local path=$1 content=$2
  if [ -e "$path" ] && ! grep -qxF "$MARKER" "$path"; then
    die "$path exists and was not written by this script; refusing to overwrite a real Slurm setup"
  fi
  printf '%s\n' "$content" > "$path"
}

write_config() {
  local host=$1
  mkdir -p "$STATE"/ctld "$STATE"/d "$STATE"/log "$SLURM_CONF_DIR"
  for ((i = 0; i < NGPU; i++)); do
    [ -c "$STATE/gpu$i" ] || mknod "$STATE/gpu$i" c 1 "${FAKE_GPU_MINORS[$i]}"
  done
  write_owned_file "$SLURM_CONF_DIR/slurm.conf" "$(render_slurm_conf "$host")"
  if [ "$NGPU" -gt 0 ]; then
    write_owned_file "$SLURM_CONF_DIR/gres.conf" "$(render_gres_conf "$host")"
  elif [ -e "$SLURM_CONF_DIR/gres.conf" ] && grep -qxF "$MARKER" "$SLURM_CONF_DIR/gres.conf"; then
    rm -f "$SLURM_CONF_DIR/gres.conf"
  fi
}

start_munge() {
  if pid_alive /run/munge/munged.pid; then
    return 0  # somebody's munged (maybe ours) already runs; it is not ours to restart
  fi
  mkdir -p /run/munge
  chown munge:munge /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    timeout 10 mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  timeout 10 su -s /bin/sh munge -c /usr/sbin/munged
  touch "$STATE/munged.started-here"
}

wait_for_idle_node() {
  for _ in $(seq 1 30); do
    if timeout 5 sinfo -h -o %T 2>/dev/null | grep -qx idle; then
      timeout 5 sinfo
      return 0
    fi
    sleep 1
  done
  die "Slurm did not come up within 30 s; see $STATE/log/"
}

start() {
  [ "$(id -u)" -eq 0 ] || die "start needs root (it installs packages and writes $SLURM_CONF_DIR)"
  [[ "$NGPU" =~ ^[0-5]$ ]] || die "LOCAL_SLURM_FAKE_GPUS must be 0..5, got '$NGPU'"
  [[ "${LOCAL_SLURM_CPUS:-1}" =~ ^[1-9][0-9]*$ ]] \
    || die "LOCAL_SLURM_CPUS must be a positive integer, got '$LOCAL_SLURM_CPUS'"
  [[ "${LOCAL_SLURM_MEMORY_MB:-1}" =~ ^[1-9][0-9]*$ ]] \
    || die "LOCAL_SLURM_MEMORY_MB must be a positive integer, got '$LOCAL_SLURM_MEMORY_MB'"
  install_packages
  local host
  host=$(hostname -s)
  mkdir -p "$STATE"
  if pid_alive "$STATE/slurmctld.pid" || pid_alive "$STATE/slurmd.pid"; then
    # Idempotent start: fine if the running cluster has the configuration we would write now.
    [ "$(cat "$SLURM_CONF_DIR/slurm.conf")" = "$(render_slurm_conf "$host")" ] \
      || die "a local Slurm with other settings is running; run '$0 stop' first"
  else
    write_config "$host"
  fi
  start_munge
  # -c: start from a clean state; jobs of an earlier session must not come back.
  pid_alive "$STATE/slurmctld.pid" || timeout 30 /usr/sbin/slurmctld -c
  pid_alive "$STATE/slurmd.pid" || timeout 30 /usr/sbin/slurmd
  wait_for_idle_node
}

# Sends SIGTERM to the PID in $1, waits up to 15 s, then SIGKILL; removes the pid file.
stop_daemon() {
  local pidfile=$1 pid
  pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
    sleep 0.5
  done
  echo "local-slurm: PID $pid ($pidfile) ignored SIGTERM; sending SIGKILL" >&2
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

stop() {
  stop_daemon "$STATE/slurmd.pid"
  stop_daemon "$STATE/slurmctld.pid"
  if [ -e "$STATE/munged.started-here" ]; then
    stop_daemon /run/munge/munged.pid
    rm -f "$STATE/munged.started-here"
  fi
  echo "local-slurm: stopped"
}

status() {
  local pidfile
  for pidfile in "$STATE/slurmctld.pid" "$STATE/slurmd.pid" /run/munge/munged.pid; do
    if pid_alive "$pidfile"; then
      echo "$(basename "$pidfile" .pid): running, PID $(cat "$pidfile")"
    else
      echo "$(basename "$pidfile" .pid): not running"
    fi
  done
  pid_alive "$STATE/slurmctld.pid" || return 1
  timeout 5 sinfo
  timeout 5 squeue --states=all
}

case "${1:-status}" in
  start | stop | status) "$1" ;;
  *) die "usage: $0 start|stop|status" ;;
esac
