#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. The PostgreSQL multi-worker test runs against a
# server this script starts (Debian package); it is skipped only where none can be had.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if url=$(bash scripts/postgres.sh); then
    export FQOPT_TEST_POSTGRES_URL="$url"
    trap 'BIN=$(ls -d /usr/lib/postgresql/*/bin | head -n1); \
          if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$BIN/pg_ctl" -D /tmp/fqopt-pg/data stop -m fast >/dev/null 2>&1; \
          else "$BIN/pg_ctl" -D /tmp/fqopt-pg/data stop -m fast >/dev/null 2>&1; fi || true' EXIT
else
    echo "PostgreSQL not available: the multi-worker storage test will be skipped" >&2
fi
.venv/bin/python -m pytest -q "$@"
