# Shell helpers shared by bench/run.sh and bench/persistent.sh (sourced; each
# sets $prog, its own name, first).
# shellcheck shell=bash disable=SC2154,SC2034 # ($prog is the caller's; server_rc and reaped_rc are for it)

die() {
    echo "$prog: $*" >&2
    exit 1
}
say() { echo "== $*" >&2; }

posint() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# reap PID SECONDS WHAT: waits up to SECONDS for the child PID to exit, kills
# it (SIGKILL, saying so) past that; sets reaped_rc to its exit status.
reap() {
    local pid=$1 limit=$2 what=$3 i
    for ((i = 0; i < limit * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "$prog: $what $pid still running after $limit s, killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    reaped_rc=0
    wait "$pid" 2>/dev/null || reaped_rc=$?
}

stop_server() { # SIGTERM server_pid, wait up to 40 s, then SIGKILL; sets server_rc
    local pid=$server_pid
    server_rc=
    [ -n "$pid" ] || return 0
    server_pid=
    kill -TERM "$pid" 2>/dev/null || true
    reap "$pid" 40 "server (after SIGTERM)"
    server_rc=$reaped_rc
}

need_package() { # COMMAND PACKAGE: installs PACKAGE with apt-get when COMMAND is missing and we are root; else says how
    command -v "$1" >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing $2"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y "$2" >/dev/null || { apt-get update >/dev/null && apt-get install -y "$2" >/dev/null; } ||
            die "apt-get install $2 failed"
    else
        die "$1 not found: install it (Debian/Ubuntu: sudo apt-get install $2) and re-run"
    fi
}

need_wrk() { need_package wrk wrk; }

kill_quietly() { # PID...: SIGKILL each non-empty pid still running (for EXIT traps)
    local pid
    for pid in "$@"; do
        if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
}

under_postgres() { # SCRIPT ARGS...: runs SCRIPT again under a throwaway PostgreSQL (no return)
    if [ -n "${_BENCH_UNDER_PG:-}" ] || [ ! -f scripts/with-postgres.sh ]; then
        die "DATABASE_URL is not set and scripts/with-postgres.sh did not provide one"
    fi
    say "no DATABASE_URL: starting a throwaway PostgreSQL via scripts/with-postgres.sh"
    export _BENCH_UNDER_PG=1
    # Durable (fsync and synchronous commits on): a commit costs what it costs.
    export PG_DURABLE=${PG_DURABLE:-1}
    exec bash scripts/with-postgres.sh bash "$@"
}

wait_ready() { # PORT PID WHAT LOG SECONDS: until http://127.0.0.1:PORT/readyz answers 200; dies if PID exits first or after SECONDS
    local n
    for ((n = 0; n < $5 * 20; n++)); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz")" = 200 ] && return 0
        kill -0 "$2" 2>/dev/null || die "$3 exited at start (see $4)"
        sleep 0.05
    done
    die "$3 not ready within $5 s (see $4)"
}

truncate_jobs() { # empties the jobs table of $DATABASE_URL, if it exists yet
    psql -X -At -q "$DATABASE_URL" \
        -c "DO \$\$ BEGIN IF to_regclass('jobs') IS NOT NULL THEN TRUNCATE jobs; END IF; END \$\$" >/dev/null
}

missing_jobs() { # IDS_FILE: prints how many of its job ids (one per line) the jobs table lacks
    psql -X -At -q "$DATABASE_URL" <<SQL
CREATE TEMP TABLE acked (id uuid);
\copy acked FROM '$1'
SELECT count(*) FROM acked a WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = a.id);
SQL
}
