#!/usr/bin/env bash
# Stop the test cluster started by tests/slurm/setup_slurm.sh: the daemons it recorded PID files
# for, then the /etc/slurm/slurm.conf symlink if it still points at this cluster's config.
# The packages and the state under $IB_SLURM_BASE (logs, spool) are left in place.
# IB_SLURM_KEEP_MUNGE=1 keeps munged running (used by setup_slurm.sh for a restart).
set -uo pipefail

BASE=${IB_SLURM_BASE:-/tmp/ib-slurm}
CONF=/etc/slurm/slurm.conf

stop_pidfile() {
  local file=$1 pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "stop_slurm: $file: pid $pid ignored SIGTERM, sending SIGKILL" >&2
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$file"
}

stop_pidfile "$BASE/run/slurmd.pid"
stop_pidfile "$BASE/run/slurmctld.pid"
[ "${IB_SLURM_KEEP_MUNGE:-0}" = 1 ] || stop_pidfile "$BASE/munge/munged.pid"

if [ -L "$CONF" ] && [ "$(readlink "$CONF")" = "$BASE/etc/slurm.conf" ] \
   && [ "${IB_SLURM_KEEP_MUNGE:-0}" != 1 ]; then
  rm -f "$CONF"
fi
exit 0
