#!/usr/bin/env bash
# Throwaway PostgreSQL cluster for development and tests.
#
#   scripts/pg.sh start          initdb + start a cluster on a free loopback port and
#                                create database "drainer". Prints exactly two
#                                eval-able lines on stdout:
#                                  PGTMP=<tempdir>
#                                  DATABASE_URL=postgres://postgres@127.0.0.1:<port>/drainer
#   scripts/pg.sh stop [DIR]     stop the cluster in DIR (default: $PGTMP) and delete
#                                DIR. Safe to call more than once.
#
# The cluster is insecure and non-durable on purpose (trust auth, fsync=off): it is
# only for tests. PG_DURABLE=1 keeps fsync and synchronous commits on (the
# benchmarks use it, so a commit costs what it costs). Set PG_BINDIR to pick a
# specific PostgreSQL installation.
set -euo pipefail

prog=pg.sh
marker=.drainer-pg # marks a directory as ours, so `stop` never deletes anything else
not_installed='PostgreSQL is not installed: install it (Debian/Ubuntu: apt-get install postgresql) or set DATABASE_URL to an existing database'

die() {
    echo "$prog: $*" >&2
    exit 1
}

# Directory holding initdb/pg_ctl: $PG_BINDIR, else initdb on PATH, else the newest
# /usr/lib/postgresql/<ver>/bin (Debian/Ubuntu), else `pg_config --bindir`.
find_bindir() {
    local d
    if [ -n "${PG_BINDIR:-}" ]; then
        echo "$PG_BINDIR"
        return
    fi
    if d=$(command -v initdb 2>/dev/null); then
        dirname "$d"
        return
    fi
    local best="" best_ver=0 ver
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] || continue
        ver=${d#/usr/lib/postgresql/}
        ver=${ver%%[!0-9]*} # major version
        if [ -n "$ver" ] && [ "$ver" -gt "$best_ver" ]; then
            best=$d
            best_ver=$ver
        fi
    done
    if [ -n "$best" ]; then
        echo "$best"
        return
    fi
    if d=$(pg_config --bindir 2>/dev/null) && [ -x "$d/initdb" ]; then
        echo "$d"
        return
    fi
    return 1
}

# Path of PostgreSQL tool $1: from $bindir if present there, else from PATH.
tool() {
    if [ -x "$bindir/$1" ]; then echo "$bindir/$1"; else command -v "$1" || die "$1 not found"; fi
}

# Run a command as $run_as (empty: as ourselves). PostgreSQL refuses to run as root.
as_owner() {
    if [ -z "$run_as" ]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u "$run_as" -- "$@"
    else
        su "$run_as" -s /bin/sh -c "$(printf '%q ' "$@")"
    fi
}

# True if something already accepts TCP connections on 127.0.0.1:$1 (bash /dev/tcp).
port_in_use() {
    (exec 9<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Close every fd above 2, so the long-lived server does not hold on to pipes of its
# caller (e.g. the $(...) reading our output would never see EOF).
close_extra_fds() {
    local fd
    for fd in /dev/fd/*; do
        fd=${fd##*/}
        if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
}

# Stop the server in $tmp/data (if running) as its owner; kill it if that fails.
stop_server() {
    local data=$tmp/data pid
    [ -f "$data/postmaster.pid" ] || return 0
    (cd "$tmp" && as_owner "$(tool pg_ctl)" stop -D "$data" -m immediate -w -t 30) >/dev/null 2>&1 </dev/null || true
    if [ -f "$data/postmaster.pid" ]; then
        pid=$(head -n1 "$data/postmaster.pid" 2>/dev/null || true)
        case $pid in '' | *[!0-9]*) ;; *) kill -KILL "$pid" 2>/dev/null || true ;; esac
    fi
}

start() {
    bindir=$(find_bindir) || {
        echo "$not_installed" >&2
        exit 1
    }
    [ -x "$bindir/initdb" ] || die "PG_BINDIR=$bindir has no initdb"
    exec 3>&1 1>&2 # only the two result lines go to stdout (fd 3); chatter to stderr

    # As root, run everything as "postgres" in a dir under /tmp that it can reach
    # (the checkout or $TMPDIR may sit in a private home directory).
    local base
    if [ "$(id -u)" = 0 ]; then
        run_as=postgres
        id "$run_as" >/dev/null 2>&1 || die "running as root, but there is no '$run_as' user to own the cluster (run as a normal user, or create it)"
        base=/tmp
    else
        run_as=
        base=${TMPDIR:-/tmp}
    fi

    tmp=$(mktemp -d "${base%/}/drainer-pg.XXXXXX")
    ok=
    # On any failure or interruption, tear down whatever was created.
    trap '[ -n "$ok" ] || { stop_server; rm -rf "$tmp"; }' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
    : >"$tmp/$marker"
    [ -z "$run_as" ] || chown "$run_as" "$tmp"

    local data=$tmp/data
    if ! (cd "$tmp" && as_owner "$(tool initdb)" -D "$data" -A trust -U postgres -E UTF8 --no-locale --no-sync) \
        >"$tmp/initdb.log" 2>&1 </dev/null; then
        cat "$tmp/initdb.log" >&2
        die "initdb failed"
    fi
    cat >>"$data/postgresql.conf" <<CONF

# ---- throwaway test cluster (scripts/pg.sh) ----
listen_addresses = '127.0.0.1'
unix_socket_directories = '$tmp'
max_connections = 400
CONF
    # Throwaway means non-durable, unless a benchmark needs real commit costs.
    if [ "${PG_DURABLE:-0}" = 0 ]; then
        printf 'fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n' >>"$data/postgresql.conf"
    else
        # Durable commits, but no checkpoint in the middle of a measurement.
        printf 'max_wal_size = 8GB\ncheckpoint_timeout = 1h\n' >>"$data/postgresql.conf"
    fi

    # Pick a random port outside the usual ephemeral ranges; retry if it is taken
    # or the server fails to start on it (e.g. another run grabbed it first).
    local port attempt started=
    for attempt in 1 2 3 4 5 6 7 8; do
        port=$((20000 + RANDOM % 12768))
        port_in_use "$port" && continue
        if (cd "$tmp" && close_extra_fds && as_owner "$(tool pg_ctl)" start -D "$data" -w -t 30 -l "$tmp/postgres.log" -o "-p $port") \
            >>"$tmp/pg_ctl.log" 2>&1 </dev/null; then
            started=1
            break
        fi
        stop_server
    done
    if [ -z "$started" ]; then
        tail -n 20 "$tmp/postgres.log" >&2 2>/dev/null || true
        die "could not start PostgreSQL (tried $attempt ports)"
    fi

    # Wait (at most ~30 s) until it accepts TCP connections, then create the database.
    local isready tries=0
    isready=$(tool pg_isready)
    until "$isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres </dev/null; do
        tries=$((tries + 1))
        [ "$tries" -lt 60 ] || die "PostgreSQL on port $port did not accept connections within 30 s"
        sleep 0.5
    done
    "$(tool psql)" -X -q -v ON_ERROR_STOP=1 -d "postgres://postgres@127.0.0.1:$port/postgres" \
        -c 'CREATE DATABASE drainer' </dev/null >/dev/null ||
        die "could not create database drainer"

    ok=1
    echo "$prog: PostgreSQL $("$(tool pg_ctl)" --version | awk '{print $3}') on 127.0.0.1:$port (data in $tmp)" >&2
    printf 'PGTMP=%q\n' "$tmp" >&3
    printf 'DATABASE_URL=%q\n' "postgres://postgres@127.0.0.1:$port/drainer" >&3
}

stop() {
    tmp=${1:-${PGTMP:-}}
    [ -n "$tmp" ] || die "usage: $prog stop <tempdir printed by '$prog start'>"
    [ -d "$tmp" ] || exit 0 # already stopped and removed
    [ -e "$tmp/$marker" ] || die "$tmp was not created by '$prog start'; refusing to touch it"
    trap '' INT TERM HUP # finish cleaning up even if interrupted

    # Stop as the data directory's owner (as root that is the postgres user).
    run_as=
    if [ "$(id -u)" = 0 ] && [ -d "$tmp/data" ]; then
        run_as=$(stat -c %U "$tmp/data" 2>/dev/null || stat -f %Su "$tmp/data")
        [ "$run_as" != root ] || run_as=
    fi
    if [ -f "$tmp/data/postmaster.pid" ]; then
        bindir=$(find_bindir) || bindir=
        stop_server
    fi
    rm -rf "$tmp" 2>/dev/null || [ ! -e "$tmp" ] || die "could not remove $tmp"
}

case "${1:-}" in
start) start ;;
stop) stop "${2:-}" ;;
*)
    echo "usage: $prog start | $prog stop <tempdir>" >&2
    exit 2
    ;;
esac
