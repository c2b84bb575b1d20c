#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on 127.0.0.1 for the multi-worker storage test.
# Installs the Debian package when it is missing (needs root and apt), initialises a data folder
# under $PGROOT (default /tmp/fqopt-pg), starts it on a free port and prints the URL:
#   postgresql+psycopg://fqopt@127.0.0.1:PORT/fqopt
# Prints nothing and exits 1 when PostgreSQL cannot be had here.
set -uo pipefail
PGROOT=${PGROOT:-/tmp/fqopt-pg}
find_bin() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && { echo "$d"; return 0; }
    done
    return 1
}
BIN=$(find_bin)
if [ -z "$BIN" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) \
            >"$PGROOT.install.log" 2>&1 || { echo "postgres install failed" >&2; exit 1; }
        BIN=$(find_bin) || exit 1
    else
        exit 1
    fi
fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
AS=""
if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd -r -M postgres
    AS="runuser -u postgres --"
fi
# a server left running in $PGROOT (an earlier run) is stopped before its folder is reused
if [ -f "$PGROOT/data/postmaster.pid" ]; then
    $AS "$BIN/pg_ctl" -D "$PGROOT/data" stop -m fast >/dev/null 2>&1 || true
fi
rm -rf "$PGROOT"; mkdir -p "$PGROOT"
[ -n "$AS" ] && chown postgres "$PGROOT"
$AS "$BIN/initdb" -D "$PGROOT/data" -U fqopt --auth=trust >"$PGROOT/initdb.log" 2>&1 || {
    echo "initdb failed, see $PGROOT/initdb.log" >&2; exit 1; }
$AS "$BIN/pg_ctl" -D "$PGROOT/data" -l "$PGROOT/server.log" -w \
    -o "-h 127.0.0.1 -p $PORT -k $PGROOT" start >/dev/null || {
    echo "pg_ctl start failed, see $PGROOT/server.log" >&2; exit 1; }
$AS "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U fqopt fqopt || exit 1
echo "$PORT" > "$PGROOT/port"
echo "postgresql+psycopg://fqopt@127.0.0.1:$PORT/fqopt"
