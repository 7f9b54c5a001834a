#!/usr/bin/env bash
# Run a command with REDIS_URL pointing at a throwaway redis-server.
#
#   scripts/with-redis.sh CMD [ARGS...]
#
# If REDIS_URL is already set, CMD is simply exec'd and uses that server.
# Otherwise a redis-server is started on a free loopback port (nothing kept on
# disk), CMD runs with REDIS_URL exported, and the server is stopped however
# CMD ends. Never the machine's own Redis. Exits with CMD's exit status.

# shellcheck disable=SC2317 # (functions called only from traps are not dead code)
set -euo pipefail

if [ $# -eq 0 ]; then
    echo "usage: $0 CMD [ARGS...]" >&2
    exit 2
fi
if [ -n "${REDIS_URL:-}" ]; then
    exec "$@"
fi
if ! command -v redis-server >/dev/null; then
    echo "$0: redis-server not found: install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis)" >&2
    exit 2
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=$(mktemp -d "${TMPDIR:-/tmp}/drainer-redis.XXXXXX")
pid=""
cleanup() {
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT

port=""
for _ in 1 2 3 4 5; do
    port=$(bash "$here/free-port.sh")
    [ "$port" != 0 ] || { echo "$0: python3 is needed to pick a free port" >&2; exit 2; }
    # In a session of its own: a Ctrl+C meant for CMD (which drains, and
    # gives its lease back) must not stop Redis under it.
    setsid redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
        --dir "$dir" --logfile "$dir/redis.log" &
    pid=$!
    for _ in $(seq 50); do
        if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
            break 2
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    # Lost the port to someone else, or too slow: try another.
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
done
if [ -z "$pid" ]; then
    echo "$0: redis-server did not start (log: $dir/redis.log)" >&2
    exit 2
fi
echo "with-redis.sh: redis-server on 127.0.0.1:$port" >&2
export REDIS_URL="redis://127.0.0.1:$port"
rc=0
"$@" || rc=$?
exit "$rc"
