#!/usr/bin/env bash
# A private, throwaway Postgres cluster for the tests (`make python-tests-postgres`), from
# Debian's `postgresql` package (the highest version under /usr/lib/postgresql).
# Usage: scripts/postgres.sh start|stop|url
#   start  initdb if needed (again if the cluster is broken), then start; no-op if running
#   stop   fast shutdown; the cluster stays for the next start
#   url    the superuser URL: postgres://postgres@127.0.0.1:PORT/postgres
# AGENTBOX_PG_DIR (default /tmp/agentbox-pg) holds the cluster (data/), its log (server.log)
# and its unix socket; AGENTBOX_PG_PORT (default 25432: below Linux's ephemeral range, so no
# client socket of the tests can be holding it) is its TCP port on 127.0.0.1.
# Auth is `trust`. As root (CI), the server runs as the package's `postgres` user.
set -euo pipefail

dir="$(realpath -m "${AGENTBOX_PG_DIR:-/tmp/agentbox-pg}")"
port="${AGENTBOX_PG_PORT:-25432}"
data="$dir/data"
log="$dir/server.log"
cd /  # the postgres user may not be able to read the caller's directory

die() {
    echo "postgres.sh: $*" >&2
    exit 1
}

bin_dir() {
    local bin
    bin="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
    [[ -x "$bin/pg_ctl" ]] || die "no Postgres under /usr/lib/postgresql/*/bin: apt-get install postgresql"
    echo "$bin"
}

# Runs a Postgres program as the cluster's owner.
as_owner() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@" </dev/null
    else
        "$@" </dev/null
    fi
}

running() {
    [[ -f "$data/PG_VERSION" ]] && as_owner "$bin/pg_ctl" status -D "$data" >/dev/null 2>&1
}

healthy() {
    [[ "$(cat "$data/PG_VERSION" 2>/dev/null)" == "$version" ]] \
        && as_owner "$bin/pg_controldata" -D "$data" >/dev/null 2>&1
}

show_log() {
    echo "postgres.sh: $1; server log $log:" >&2
    tail -n 50 "$log" >&2 2>/dev/null || true
    exit 1
}

start() {
    if running; then
        echo "postgres.sh: already running on 127.0.0.1:$port ($data)"
        return
    fi
    if [[ "$(id -u)" == 0 ]]; then
        getent passwd postgres >/dev/null || die "no 'postgres' user to run as: apt-get install postgresql"
        mkdir -p "$dir"
        chown -R postgres: "$dir"
    else
        mkdir -p "$dir"
    fi
    as_owner touch "$log"
    if ! healthy; then
        [[ -e "$data" ]] && echo "postgres.sh: $data is not a usable $version cluster; initializing it again" >&2
        rm -rf "$data"
        as_owner "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C >"$log" 2>&1 \
            || show_log "initdb failed"
    fi
    as_owner "$bin/pg_ctl" start -D "$data" -l "$log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories='$dir' -c max_connections=200" \
        >/dev/null 2>&1 || show_log "the server did not start"
    as_owner "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -t 30 \
        || show_log "the server does not answer on 127.0.0.1:$port"
    echo "postgres.sh: Postgres $version on 127.0.0.1:$port ($data)"
}

stop() {
    if running; then
        as_owner "$bin/pg_ctl" stop -D "$data" -m fast -w -t 60 >/dev/null || show_log "the server did not stop"
    fi
}

case "${1:-}" in
    start | stop)
        bin="$(bin_dir)"
        version="$(basename "$(dirname "$bin")")"
        "$1"
        ;;
    url) echo "postgres://postgres@127.0.0.1:$port/postgres" ;;
    *) die "usage: $0 start|stop|url" ;;
esac
