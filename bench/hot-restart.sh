#!/usr/bin/env bash
# The hot-restart proof (`make hot-restart`): one drainer on one port, no
# load balancer, upgraded HOT_UPGRADES times (default 10) by socket handoff
# under load. See docs/deploying.md.
#
#   bash bench/hot-restart.sh     (starts its own PostgreSQL)
#
#   1. drainer with CONTROL_SOCKET in a directory of its own (mode 0700);
#      every generation logs to the same file (a successor inherits stderr);
#   2. `persistent-load work` keeps HOT_CONNECTIONS (64) connections busy
#      with POST /work, half of them opening a new connection per request,
#      for the whole run, recording every request's outcome and latency;
#   3. after HOT_STEADY_MS (3000) of steady load, HOT_UPGRADES times:
#      `drainer upgrade --control-socket …` (it returns at the commit point),
#      wait for the old process to exit (its log line), then HOT_SETTLE_MS (1000);
#   4. the report: requests and failures, acknowledged jobs missing from the
#      database, the listening socket's inode in every generation (one
#      number: the same kernel socket throughout), the pause between the old
#      instance's last accept and the new one's first (their log lines'
#      millisecond stamps), and the latency during the upgrades (from each
#      `upgrade` to the old process's exit) beside the steady p99.
# HOT_OUT=<dir> keeps the raw outputs and the log.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
prog=bench/hot-restart.sh
# shellcheck source=bench/common.sh
. bench/common.sh

upgrades=${HOT_UPGRADES:-10}
connections=${HOT_CONNECTIONS:-64}
steady_ms=${HOT_STEADY_MS:-3000}
settle_ms=${HOT_SETTLE_MS:-1000}
posint HOT_UPGRADES "$upgrades"
posint HOT_CONNECTIONS "$connections"
posint HOT_STEADY_MS "$steady_ms"
posint HOT_SETTLE_MS "$settle_ms"
command -v psql >/dev/null || die "psql is required (Debian/Ubuntu: apt-get install postgresql-client)"
if [ -z "${DATABASE_URL:-}" ]; then
    under_postgres "$root/bench/hot-restart.sh" "$@"
fi
[ -n "${_BENCH_PREPARED:-}" ] || cargo build --release -p drainer -p persistent-load
bin=${CARGO_TARGET_DIR:-$root/target}/release
out=${HOT_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/drainer-hot.XXXXXX")}
mkdir -p "$out"
chmod 700 "$out"
say "raw outputs and the log: $out"
socket=$out/control.sock
log=$out/drainer.log
first_pid=
load_pid=
current=
cleanup() { kill_quietly "$load_pid" "$current" "$first_pid"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now_ms() { echo $(($(date +%s%N) / 1000000)); }
gone() { # PID SECONDS: waits until PID no longer exists
    local i
    for ((i = 0; i < $2 * 100; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.01
    done
    return 1
}
exited() { # N SECONDS: waits until N generations have logged their exit
    # (a generation whose parent is gone may stay a zombie for a while: its
    # log line says when it ended)
    local i
    for ((i = 0; i < $2 * 100; i++)); do
        [ "$(grep -c 'exited with code' "$log")" -ge "$1" ] && return 0
        sleep 0.01
    done
    return 1
}

port=$(free_port)
truncate_jobs
env PORT="$port" BIND_ADDRESS=127.0.0.1 CONTROL_SOCKET="$socket" RUST_LOG=info \
    "$bin/drainer" >"$log" 2>&1 &
first_pid=$!
current=$first_pid
wait_ready "$port" "$first_pid" drainer "$log" 20
load0=$(now_ms)
"$bin/persistent-load" work --addr "127.0.0.1:$port" --connections "$connections" \
    --fresh $((connections / 2)) --ids-file "$out/ids" --timeline-file "$out/timeline.tsv" \
    >"$out/load.json" 2>"$out/load.log" &
load_pid=$!
sleep "$(awk -v ms="$steady_ms" 'BEGIN { printf "%.3f", ms / 1000 }')"
: >"$out/upgrades.tsv"
for ((u = 1; u <= upgrades; u++)); do
    say "upgrade $u/$upgrades (pid $current)"
    t0=$(now_ms)
    rc=0
    said=$("$bin/drainer" upgrade --control-socket "$socket" 2>&1) || rc=$?
    t1=$(now_ms)
    [ "$rc" = 0 ] || die "upgrade $u failed (exit $rc): $said"
    next=$(echo "$said" | sed -n 's/^drainer upgrade: pid \([0-9]*\) took over$/\1/p')
    [ -n "$next" ] || die "upgrade $u: no pid in '$said'"
    exited "$u" 60 || die "pid $current did not exit within 60 s of upgrade $u"
    t2=$(now_ms)
    # upgrade, start (ms since the load began), commit, old gone, new pid
    printf '%s\t%s\t%s\t%s\t%s\n' "$u" "$((t0 - load0))" "$((t1 - load0))" "$((t2 - load0))" "$next" >>"$out/upgrades.tsv"
    current=$next
    sleep "$(awk -v ms="$settle_ms" 'BEGIN { printf "%.3f", ms / 1000 }')"
done
kill -INT "$load_pid"
wait "$load_pid" || die "the load client failed (see $out/load.log)"
load_pid=
kill -TERM "$current"
exited $((upgrades + 1)) 60 || die "the last generation (pid $current) did not exit"
gone "$current" 60 || true
current=
wait "$first_pid" 2>/dev/null || true
first_pid=
missing=$(missing_jobs "$out/ids")
events=$(psql -X -At "$DATABASE_URL" -c "SELECT event_type || ':' || count(*) FROM drainevent GROUP BY event_type ORDER BY 1" | paste -sd' ')
status=$(psql -X -At "$DATABASE_URL" -c "SELECT string_agg(status, ',') FROM serverinstance")

python3 - "$out" "$upgrades" "$connections" "$missing" "$events" "$status" <<'PY'
import json, re, statistics, sys
from datetime import datetime
out, upgrades, connections, missing, events, status = sys.argv[1:7]
load = json.load(open(f"{out}/load.json"))
lines = open(f"{out}/drainer.log").read().splitlines()
stamp = lambda l: datetime.strptime(l[1:24], "%Y-%m-%dT%H:%M:%S.%f").timestamp() * 1000
inodes = sorted({m.group(1) for l in lines for m in [re.search(r"\(socket inode (\d+)\)", l)] if m})
released = [stamp(l) for l in lines if "stopped accepting; committed" in l]
accepting = [stamp(l) for l in lines if "takeover committed: listening" in l]
pauses = [a - r for r, a in zip(released, accepting)]
codes = [l.rsplit(" ", 1)[1] for l in lines if "exited with code" in l]
exits = [stamp(l) for l in lines if "exited with code" in l]
drains = [e - r for r, e in zip(released, exits)]
ups = [l.split("\t") for l in open(f"{out}/upgrades.tsv").read().splitlines()]
windows = [(int(u[1]), int(u[3])) for u in ups]
rows = [l.split("\t") for l in open(f"{out}/timeline.tsv").read().splitlines()]
inside, steady = [], []
for at, ms, _ in rows:
    at, ms = float(at), float(ms)
    (inside if any(a <= at <= b + 50 for a, b in windows) else steady).append(ms)
q = lambda v, p: sorted(v)[min(len(v) - 1, int(p * len(v)))] if v else float("nan")
failed = load["failed"]
ok = failed == 0 and int(missing) == 0 and len(inodes) == 1 and load["requests"] >= 1
print(f"{upgrades} upgrades by `drainer upgrade` under {connections} connections of POST /work "
      f"(half keep-alive, half a new connection per request).\n")
print("| measure | value | target | |")
print("|---|---:|---|---|")
print(f"| requests | {load['requests']:,} | | |")
print(f"| failed (non-2xx, reset, refused, closed, timeout) | {failed} | 0 | {'met' if failed == 0 else '**missed**'} |")
print(f"| acknowledged jobs missing from the database | {missing} | 0 | {'met' if int(missing) == 0 else '**missed**'} |")
print(f"| listening socket inodes over {len(codes)} generations | {len(inodes)} ({', '.join(inodes)}) | 1 | {'met' if len(inodes) == 1 else '**missed**'} |")
if pauses:
    print(f"| accept pause (old's last accept → new's first), median / max, ms | {statistics.median(pauses):.0f} / {max(pauses):.0f} | | |")
print(f"| latency, steady, p50 / p99, ms | {q(steady, .5):.1f} / {q(steady, .99):.1f} | | |")
print(f"| latency during upgrades, p50 / p99 / max, ms | {q(inside, .5):.1f} / {q(inside, .99):.1f} / {max(inside) if inside else 0:.1f} | | |")
print()
print(f"- outcomes: {load['outcomes']}")
print(f"- exit codes of the generations, in order: {', '.join(codes)}")
print(f"- records: {events}; serverinstance: {status}")
print("- per upgrade, `drainer upgrade` until it returned (the commit point) and the old process's "
      "drain (commit to its exit), ms: " + ", ".join(
    f"{int(u[2]) - int(u[1])} + {d:.0f}" for u, d in zip(ups, drains)))
sys.exit(0 if ok else 3)
PY
