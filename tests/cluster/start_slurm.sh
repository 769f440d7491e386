#!/usr/bin/env bash
# Bring up a single-node SLURM cluster on this machine (root only) for tests/test_cluster.py.
#
#   tests/cluster/start_slurm.sh        # install if needed, start, wait until the node is idle
#   tests/cluster/stop_slurm.sh         # stop the daemons again
#
# Installs the Debian packages slurmctld slurmd slurm-client munge with apt-get when missing,
# writes /etc/slurm/{slurm,gres}.conf from the templates next to this script (node CPUs = nproc but
# at least 4, RealMemory = 80 % of total memory, two fake GPUs on /dev/null and /dev/zero), starts munged, slurmctld and
# slurmd, and waits until the node is idle. Idempotent: a cluster this script already started
# and that answers is left alone (exit 0).
#
# Exit codes: 0 ready; 77 cannot run here (not root, no apt-get, packages not installable, or a
# foreign /etc/slurm/slurm.conf that this script will not overwrite) -- the reason is printed
# on stderr; anything else: a real failure (daemon logs are printed).
#
# Environment: GENPROMP_SLURM_STATE (default /var/tmp/genpromp-slurm) holds state, pid and log
# files; GENPROMP_SLURM_PARTITION (default ci) names the partition (profiles/slurm-ci uses "ci").
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${GENPROMP_SLURM_STATE:-/var/tmp/genpromp-slurm}"
PARTITION="${GENPROMP_SLURM_PARTITION:-ci}"
CONF_DIR=/etc/slurm
MARKER="# genpromp-ci"

skip() { echo "start_slurm.sh: SKIP: $*" >&2; exit 77; }
log() { echo "start_slurm.sh: $*" >&2; }

[[ "$(id -u)" == 0 ]] || skip "needs root (it installs packages and starts slurmctld/slurmd as root)"

# --- 1. packages -------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || skip "slurm is not installed and apt-get is unavailable"
  log "installing slurmctld slurmd slurm-client munge with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  mkdir -p "$STATE"
  apt-get update -qq >"$STATE/apt.log" 2>&1 || skip "apt-get update failed (see $STATE/apt.log)"
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge \
    >>"$STATE/apt.log" 2>&1 || skip "apt-get install failed (see $STATE/apt.log)"
fi

# --- 2. configuration --------------------------------------------------------------------
HOST="$(hostname -s)"
# At least 4 CPUs even on a 2-core machine (slurm.conf: SlurmdParameters=config_overrides), so a
# 2-GPU job whose data loaders need 2 CPUs per GPU process can be scheduled.
CPUS="$(( $(nproc) > 4 ? $(nproc) : 4 ))"
MEM_MB="$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)"

render() {  # template -> stdout
  sed -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM_MB@|$MEM_MB|g" \
      -e "s|@STATE@|$STATE|g" -e "s|@PARTITION@|$PARTITION|g" "$1"
}
mkdir -p "$CONF_DIR" "$STATE/slurmctld" "$STATE/slurmd"
if [[ -e "$CONF_DIR/slurm.conf" ]] && ! head -n1 "$CONF_DIR/slurm.conf" | grep -q "^$MARKER"; then
  skip "$CONF_DIR/slurm.conf exists and was not written by this script; refusing to replace it"
fi
new_conf="$(render "$HERE/slurm.conf.in")"
new_gres="$(render "$HERE/gres.conf.in")"
changed=0
if [[ "$new_conf" != "$(cat "$CONF_DIR/slurm.conf" 2>/dev/null)" ]]; then
  printf '%s\n' "$new_conf" >"$CONF_DIR/slurm.conf"; changed=1
fi
if [[ "$new_gres" != "$(cat "$CONF_DIR/gres.conf" 2>/dev/null)" ]]; then
  printf '%s\n' "$new_gres" >"$CONF_DIR/gres.conf"; changed=1
fi

node_state() { sinfo -h -N -o '%t' 2>/dev/null | head -n1; }
pid_alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# --- 3. already running? ----------------------------------------------------------------
if [[ $changed == 0 ]] && pid_alive "$STATE/slurmctld.pid" && pid_alive "$STATE/slurmd.pid"; then
  case "$(node_state)" in
    idle|mix|alloc|comp) log "already running (node $(node_state))"; exit 0 ;;
  esac
fi
if [[ $changed == 1 ]] && { pid_alive "$STATE/slurmctld.pid" || pid_alive "$STATE/slurmd.pid"; }; then
  log "configuration changed: restarting"
  "$HERE/stop_slurm.sh"
fi

# --- 4. munge ----------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
  log "creating /etc/munge/munge.key"
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key 2>/dev/null || true
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  if id munge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
  else
    /usr/sbin/munged --force
  fi
  touch "$STATE/munged.ours"   # stop_slurm.sh stops munged only if this script started it
  for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n </dev/null | unmunge >/dev/null || { log "munged did not start"; exit 1; }
fi

# --- 5. slurmctld + slurmd ---------------------------------------------------------------
pid_alive "$STATE/slurmctld.pid" || slurmctld -c
pid_alive "$STATE/slurmd.pid" || slurmd -c

for _ in $(seq 150); do
  case "$(node_state)" in
    idle|mix|alloc) log "ready: node $HOST, $CPUS CPUs, ${MEM_MB} MB, 2 fake GPUs, partition $PARTITION"; exit 0 ;;
    down*|drain*|fail*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 0.2
done
log "node did not become idle in 30 s; sinfo says: $(sinfo -N 2>&1 | tail -n +2)"
tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
exit 1
