#!/usr/bin/env bash
# Start/stop a throw-away `usgi serve` for the ingest benchmark; `count` prints how many objects are indexed.
# Settings come from the environment (scripts/bench.sh sets them).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${USGI_DATA_DIR:?}" "${USGI_DICOM_PORT:?}"
PIDFILE="$USGI_DATA_DIR.pid"

stop() {
  if [[ -f $PIDFILE ]]; then
    pid=$(cat "$PIDFILE")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
  fi
}

start() {
  # The previous run's store is moved aside, not deleted: this machine's root file system is ext4 without a
  # journal, where a new inode skips every inode freed in the last minutes, one by one (recently_deleted).
  # Deleting a thousand files just before a run put that scan on the service's clock (perf: a fifth of its
  # CPU). scripts/bench.sh deletes them all when the benchmark ends.
  if [[ -e $USGI_DATA_DIR ]]; then
    mkdir -p "$USGI_DATA_DIR.old"
    mv "$USGI_DATA_DIR" "$USGI_DATA_DIR.old/$(date +%s%N)"
  fi
  .venv/bin/usgi migrate >/dev/null
  .venv/bin/usgi serve >>"$USGI_DATA_DIR.log" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 100); do
    if echoscu -aet ECHOSCU -aec "${USGI_AE_TITLE:-USGI}" 127.0.0.1 "$USGI_DICOM_PORT" 2>/dev/null; then
      cpu_ticks >"$USGI_DATA_DIR.cpu0"  # start-up (imports, migrations) is not the ingest's
      return 0
    fi
    sleep 0.1
  done
  echo "usgi serve did not answer C-ECHO" >&2; exit 1
}

# User + system CPU clock ticks of `usgi serve` and its receiver processes.
cpu_ticks() {
  local pid total=0 fields
  pid=$(cat "$PIDFILE")
  for p in $pid $(pgrep -P "$pid" || true); do
    read -r -a fields <"/proc/$p/stat" || continue
    total=$((total + fields[13] + fields[14]))
  done
  echo "$total"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  count)
    n=$(.venv/bin/python - <<'PY'
from sqlalchemy import func, select
from service.bootstrap import build_services
from service.config import Settings
from service.models import Instance
svc = build_services(Settings.from_env())
with svc.session_factory() as s:
    print(s.scalar(select(func.count(Instance.id))))
PY
)
    # The service's CPU per stored object for this send, for scripts/bench.sh to print at the end.
    # (The driver also counts before each send, expecting 0: nothing to report then.)
    if [[ $n -gt 0 ]]; then
      ticks=$(($(cpu_ticks) - $(cat "$USGI_DATA_DIR.cpu0")))
      awk -v n="$n" -v t="$ticks" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { printf "%d objects, %.2f ms CPU per object\n", n, t * 1000 / hz / n }' >>"$USGI_DATA_DIR.cpu.log"
    fi
    echo "$n"
    ;;
  *) echo "usage: $0 start|stop|restart|count" >&2; exit 2 ;;
esac
