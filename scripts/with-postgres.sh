#!/usr/bin/env bash
# Run a command with DATABASE_URL pointing at a PostgreSQL database.
#
#   scripts/with-postgres.sh CMD [ARGS...]
#
# If DATABASE_URL is already set, CMD is simply exec'd and uses that database.
# Otherwise a throwaway cluster is started with scripts/pg.sh, CMD runs with
# DATABASE_URL exported, and the cluster is stopped and deleted however CMD ends
# (normal exit, error, Ctrl+C, SIGTERM). Exits with CMD's exit status.

# shellcheck disable=SC2317 # (functions called only from traps are not dead code)
set -euo pipefail

if [ $# -eq 0 ]; then
    echo "usage: $0 CMD [ARGS...]" >&2
    exit 2
fi
if [ -n "${DATABASE_URL:-}" ]; then
    exec "$@"
fi

# Signals ignored when we were started (nohup, background job of a script) are
# reported by `trap -p`; they stay ignored for CMD, the others are reset below.
int_ignored=$(trap -p INT)
quit_ignored=$(trap -p QUIT)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=""   # what pg.sh start printed: PGTMP=... and DATABASE_URL=...
PGTMP=""
child=""

cleanup() {
    trap '' INT TERM HUP # a second Ctrl+C must not leave the cluster behind
    if [ -z "$PGTMP" ] && [ -n "$out" ]; then eval "$out"; fi
    if [ -n "$PGTMP" ]; then
        bash "$here/pg.sh" stop "$PGTMP" || true
    fi
}
trap cleanup EXIT
# Until CMD runs, a signal just ends the script (and the EXIT trap cleans up).
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

out=$(bash "$here/pg.sh" start) # on failure pg.sh has said why; set -e exits
eval "$out"
export DATABASE_URL

# True when this script is in its terminal's foreground process group: then a
# Ctrl+C was delivered by the terminal to CMD as well (same process group), and
# forwarding it would make CMD see it twice (which a server may treat as "force").
in_terminal_foreground() {
    local ids pgid tpgid
    ids=$(ps -o pgid= -o tpgid= -p $$ 2>/dev/null) || return 1
    read -r pgid tpgid <<<"$ids"
    [ -n "$tpgid" ] && [ "$pgid" = "$tpgid" ]
}

# Pass signals sent to this script on to CMD, then keep waiting for it to finish.
forward() {
    [ -n "$child" ] || return 0
    if [ "$1" = INT ] && in_terminal_foreground; then return 0; fi
    kill -s "$1" "$child" 2>/dev/null || true
}
trap 'forward INT' INT
trap 'forward TERM' TERM
trap 'forward HUP' HUP

# CMD runs in the background so that this shell can react to signals while it runs
# (bash defers traps until a foreground command finishes). A background job would
# get SIGINT/SIGQUIT ignored and stdin from /dev/null: undo both.
run_cmd() {
    if [ -z "$int_ignored" ]; then trap - INT; fi
    if [ -z "$quit_ignored" ]; then trap - QUIT; fi
    exec "$@"
}
if { true 9<&0; } 2>/dev/null; then
    run_cmd "$@" <&0 &
else
    run_cmd "$@" </dev/null & # stdin is closed
fi
child=$!

# `wait` returns early (status 128+signal) when a trapped signal arrives: wait again
# while CMD is still running. If CMD exited just as a signal came in, ask bash once
# more for the status it saved (bash versions differ here: accept only sane values).
while :; do
    rc=0
    wait "$child" || rc=$?
    kill -0 "$child" 2>/dev/null || break
done
r=0
wait "$child" 2>/dev/null || r=$?
if [ "$r" -ge 0 ] && [ "$r" -le 255 ] && [ "$r" -ne 127 ]; then rc=$r; fi
exit "$rc"
