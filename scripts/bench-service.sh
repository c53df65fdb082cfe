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
    echoscu -aet ECHOSCU -aec "${USGI_AE_TITLE:-USGI}" 127.0.0.1 "$USGI_DICOM_PORT" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "usgi serve did not answer C-ECHO" >&2; exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  count) .venv/bin/python - <<'PY'
from sqlalchemy import func, select
from service.bootstrap import build_services
from service.config import Settings
from service.models import Instance
svc = build_services(Settings.from_env())
with svc.session_factory() as s:
    print(s.scalar(select(func.count(Instance.id))))
PY
  ;;
  *) echo "usage: $0 start|stop|restart|count" >&2; exit 2 ;;
esac
