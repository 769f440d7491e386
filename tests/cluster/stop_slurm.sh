#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by tests/cluster/start_slurm.sh (slurmd, slurmctld,
# munged if start_slurm.sh started it -- each by the pid it recorded). Idempotent: nothing running -> exit 0.
# Packages and /etc/slurm/*.conf stay, so the next start_slurm.sh takes about 2 s.
set -uo pipefail
STATE="${GENPROMP_SLURM_STATE:-/var/tmp/genpromp-slurm}"

stop_pidfile() {  # pidfile name
  local pidfile="$1" name="$2" pid
  [[ -s "$pidfile" ]] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    echo "stop_slurm.sh: stopped $name (pid $pid)" >&2
  fi
  rm -f "$pidfile"
}

if command -v scontrol >/dev/null && [[ -s "$STATE/slurmctld.pid" ]]; then
  # Cancel jobs still queued/running so no stray job outlives the cluster.
  scancel --full --quiet --state=PENDING 2>/dev/null || true
  scancel --full --quiet --state=RUNNING 2>/dev/null || true
fi
stop_pidfile "$STATE/slurmd.pid" slurmd
stop_pidfile "$STATE/slurmctld.pid" slurmctld
if [[ -e "$STATE/munged.ours" ]]; then
  stop_pidfile /run/munge/munged.pid munged
  rm -f "$STATE/munged.ours"
fi
exit 0
