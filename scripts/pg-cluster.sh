#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests and benchmarks: initdb as a non-root user, no TCP,
# a Unix socket in a private directory. Uses Debian's `postgresql` package (installed here
# when missing and apt-get is available).
#
#   scripts/pg-cluster.sh start [DIR]    prints the connection URL on stdout
#   scripts/pg-cluster.sh url [DIR]      prints it again
#   scripts/pg-cluster.sh restart [DIR]  pg_ctl restart -m fast (tests of a database restart)
#   scripts/pg-cluster.sh stop-keep [DIR] stops the server, keeps its data (start resumes it)
#   scripts/pg-cluster.sh stop [DIR]     stops the server and removes DIR
#
# DIR defaults to $BATON_PG_DIR or /tmp/baton-pg.
set -euo pipefail

cmd="${1:-}"
dir="${2:-${BATON_PG_DIR:-/tmp/baton-pg}}"
port="${BATON_PG_PORT:-5433}"

bindir() {
  local b
  b="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -z "$b" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    b="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  fi
  [ -n "$b" ] || { echo "pg-cluster: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
  echo "$b"
}

# Runs a command as the cluster's owner: never root (initdb refuses it).
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u nobody -- "$@"
  else
    "$@"
  fi
}

url() {
  echo "postgresql://baton@localhost/postgres?host=$dir/sock&port=$port"
}

case "$cmd" in
  start)
    bin="$(bindir)"
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown nobody "$dir"; fi
    chmod 700 "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      as_owner mkdir -p "$dir/sock"
      as_owner "$bin/initdb" -D "$dir/data" -U baton --auth=trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
      # The socket directory is reachable by the test user (root or the owner itself).
      chmod 755 "$dir" "$dir/sock"
    fi
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses='' -c unix_socket_directories='$dir/sock' -p $port \
          -c synchronous_commit=on -c fsync=on -c max_connections=300 \
          -c shared_buffers=64MB" start >&2 \
      || { cat "$dir/server.log" >&2; exit 1; }
    url
    ;;
  url)
    url
    ;;
  restart)
    bin="$(bindir)"
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -m fast restart >&2
    ;;
  stop-keep)
    bin="$(bindir)"
    as_owner "$bin/pg_ctl" -D "$dir/data" -w -t 60 -m fast stop >&2
    ;;
  stop)
    bin="$(bindir)"
    if [ -f "$dir/data/postmaster.pid" ]; then
      as_owner "$bin/pg_ctl" -D "$dir/data" -w -t 60 -m fast stop >&2 || true
    fi
    rm -rf "$dir"
    ;;
  *)
    echo "usage: $0 start|url|restart|stop-keep|stop [DIR]" >&2
    exit 2
    ;;
esac
