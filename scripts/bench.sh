#!/usr/bin/env bash
# The DICOM ingest benchmark (../shared/bench) against usgi-docs, with dcmtk's storescp and Orthanc
# measured in the same run. Each send goes to a freshly started service with an empty store, and the
# indexed count is checked after it. Extra arguments go to the benchmark driver, e.g. --limit 100.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR="${USGI_BENCH_DIR:-../shared/bench}"
export USGI_DATA_DIR="${BENCH_DATA_DIR:-/tmp/usgi-bench/data}"
export USGI_DICOM_PORT="${BENCH_DICOM_PORT:-11190}" USGI_HTTP_PORT="${BENCH_HTTP_PORT:-18090}"
export USGI_DICOM_HOST=127.0.0.1 USGI_DICOM_PEERS=BENCHSCU,ECHOSCU USGI_LOG_LEVEL=WARNING
export USGI_DICOM_PROCESSES="${USGI_DICOM_PROCESSES:-4}"
unset USGI_DATABASE_URL USGI_IMAGE_STORE
mkdir -p "$(dirname "$USGI_DATA_DIR")"
trap 'scripts/bench-service.sh stop; rm -rf "$USGI_DATA_DIR.old"' EXIT
echo "usgi-docs under test: $USGI_DICOM_PROCESSES receiver process(es), max PDU ${USGI_DICOM_MAX_PDU:-131072}, SQLite + file store (fsync)"
rm -f "$USGI_DATA_DIR.cpu.log"
bash "$BENCH_DIR/ingest_bench.sh" --host 127.0.0.1 --port "$USGI_DICOM_PORT" --aet USGI --name usgi-docs \
  --peers storescp,orthanc --reset-cmd "scripts/bench-service.sh restart" --count-cmd "scripts/bench-service.sh count" \
  --sets "${BENCH_SETS:-single_jpeg,cine_jpeg}" --parallel "${BENCH_PARALLEL:-1,4}" --repeats "${BENCH_REPEATS:-3}" \
  --out-md "${BENCH_OUT_MD:-/tmp/usgi-bench/results.md}" "$@"
echo "usgi-docs CPU per object (all its processes), one line per send in the order of the log above:"
cat "$USGI_DATA_DIR.cpu.log"
