#!/usr/bin/env bash
# Benchmark the outbox and the relay (REDIS_URL): POST /work throughput at 32
# connections with REDIS_URL set beside without, and the publish lag from a
# job's commit to its stream entry. See docs/benchmarks.md.
#
#   bash bench/relay.sh            (starts its own PostgreSQL and redis-server)
#
# Each of BENCH_RELAY_ROUNDS rounds (default 3) starts a fresh drainer without
# REDIS_URL, then one with it (a redis-server of its own on a free port, empty
# each round), and runs, after a BENCH_WARMUP s warm-up,
#   wrk -t2 -c32 -d${BENCH_SECONDS}s -s bench/post_work.lua
# from an empty jobs table. With REDIS_URL it then waits until the outbox is
# empty and computes each job's lag: its stream entry's time (the entry id's
# milliseconds, Redis's clock) less its created_at (PostgreSQL's now() in the
# inserting transaction: the lag includes the INSERT itself). Both clocks are
# this machine's. Prints a markdown table (medians, min–max over the rounds).
#
# Then the crash run: three instances (one PostgreSQL, one redis-server, the
# same LOCK_NAME, LOCK_TTL_MS=$BENCH_CRASH_TTL_MS, default 3000) under
#   wrk -t1 -c11 (one per instance, 33 connections in all)
# for the whole run; BENCH_RELAY_KILLS times (default 5, 0 skips it) the lease
# holder (the instance whose /metrics says drainer_lease_held 1) is SIGKILLed
# while it publishes, started again on its port, and the run waits for a new
# holder. At the end the load stops, every instance gets SIGTERM (its flush),
# and the stream is compared with the jobs table: committed jobs, stream
# entries, jobs missing from the stream, and duplicates (target 0 and 0).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
prog=bench/relay.sh
# shellcheck source=bench/common.sh
. bench/common.sh

rounds=${BENCH_RELAY_ROUNDS:-3}
kills=${BENCH_RELAY_KILLS:-5}
crash_ttl=${BENCH_CRASH_TTL_MS:-3000}
duration=${BENCH_SECONDS:-10}
warmup=${BENCH_WARMUP:-2}
posint BENCH_RELAY_ROUNDS "$rounds"
posint BENCH_SECONDS "$duration"
[[ "$kills" =~ ^[0-9]+$ ]] || die "BENCH_RELAY_KILLS must be a number, got '$kills'"
posint BENCH_CRASH_TTL_MS "$crash_ttl"
command -v redis-server >/dev/null || die "redis-server not found (Debian/Ubuntu: apt-get install redis-server)"
command -v psql >/dev/null || die "psql is required (Debian/Ubuntu: apt-get install postgresql-client)"
need_wrk
if [ -z "${DATABASE_URL:-}" ]; then
    under_postgres "$root/bench/relay.sh" "$@"
fi
[ -n "${_BENCH_PREPARED:-}" ] || cargo build --release -p drainer
drainer=${CARGO_TARGET_DIR:-$root/target}/release/drainer
out=$(mktemp -d "${TMPDIR:-/tmp}/drainer-relay-bench.XXXXXX")
server_pid=
redis_pid=
declare -a crash_pids=() wrk_pids=()
cleanup() {
    stop_server
    kill_quietly "${wrk_pids[@]}" "${crash_pids[@]}"
    if [ -n "$redis_pid" ]; then
        kill -TERM "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

sql() { psql -X -At "$DATABASE_URL" -c "$1"; }

start_redis() { # sets redis_port, redis_pid
    redis_port=$(free_port)
    redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
        --logfile "$out/redis.log" &
    redis_pid=$!
    for _ in $(seq 100); do
        redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.05
    done
    die "redis-server did not start"
}

run_round() { # $1 without|with, $2 round; prints req/s [p50 p99 lag ms]
    local mode=$1 round=$2 port log i
    port=$(free_port)
    log=$out/$mode-$round.log
    local env=(PORT="$port" BIND_ADDRESS=127.0.0.1 RUST_LOG=warn)
    if [ "$mode" = with ]; then
        start_redis
        env+=(REDIS_URL="redis://127.0.0.1:$redis_port" LOCK_NAME=bench)
    fi
    env "${env[@]}" "$drainer" >"$log" 2>&1 &
    server_pid=$!
    for ((i = 0; i < 200; i++)); do
        curl -s -o /dev/null "http://127.0.0.1:$port/health" && break
        sleep 0.05
    done
    [ "$warmup" = 0 ] || wrk -t2 -c32 -d"${warmup}s" -s bench/post_work.lua "http://127.0.0.1:$port/work" >/dev/null
    sql "TRUNCATE jobs, outbox; CHECKPOINT" >/dev/null
    [ "$mode" = without ] || redis-cli -p "$redis_port" del drainer:jobs >/dev/null
    local rps
    rps=$(wrk -t2 -c32 -d"${duration}s" -s bench/post_work.lua "http://127.0.0.1:$port/work" |
        awk '/Requests\/sec/ { print $2 }')
    if [ "$mode" = with ]; then
        for ((i = 0; i < 600; i++)); do
            [ "$(sql 'SELECT count(*) FROM outbox')" = 0 ] && break
            sleep 0.05
        done
        sql "COPY (SELECT id, (extract(epoch FROM created_at) * 1000)::bigint FROM jobs) TO STDOUT" >"$out/jobs-$round.tsv"
        redis-cli -p "$redis_port" --raw XRANGE drainer:jobs - + >"$out/stream-$round.txt"
    fi
    stop_server
    if [ "$mode" = with ]; then
        kill -TERM "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
        redis_pid=
        python3 - "$out/jobs-$round.tsv" "$out/stream-$round.txt" "$rps" <<'PY'
import sys
jobs = {}
for line in open(sys.argv[1]):
    jid, ms = line.split("\t")
    jobs[jid] = int(ms)
lines = [l.rstrip("\n") for l in open(sys.argv[2])]
lags, seen, dup, i = [], set(), 0, 0
while i < len(lines):
    entry_ms = int(lines[i].split("-")[0])
    fields = dict(zip(lines[i + 1:i + 7:2], lines[i + 2:i + 7:2]))
    jid = fields["id"]
    if jid in seen:
        dup += 1
    seen.add(jid)
    if jid in jobs:
        lags.append(entry_ms - jobs[jid])
    i += 7
lags.sort()
q = lambda p: lags[min(len(lags) - 1, int(p * len(lags)))] if lags else float("nan")
missing = len(set(jobs) - seen)
print(sys.argv[3], q(0.5), q(0.99), len(jobs), len(seen), missing, dup)
PY
    else
        echo "$rps"
    fi
}

declare -a without with_rps p50s p99s notes
for ((r = 1; r <= rounds; r++)); do
    say "relay round $r/$rounds: without REDIS_URL"
    without+=("$(run_round without "$r")")
    say "relay round $r/$rounds: with REDIS_URL (outbox + relay)"
    read -r rps p50 p99 jobs entries missing dup < <(run_round with "$r")
    with_rps+=("$rps")
    p50s+=("$p50")
    p99s+=("$p99")
    notes+=("round $r: $jobs jobs committed, $entries stream entries, $missing missing, $dup duplicates")
done
python3 - "${without[*]}" "${with_rps[*]}" "${p50s[*]}" "${p99s[*]}" <<'PY'
import statistics, sys
w = [float(x) for x in sys.argv[1].split()]
r = [float(x) for x in sys.argv[2].split()]
p50 = [float(x) for x in sys.argv[3].split()]
p99 = [float(x) for x in sys.argv[4].split()]
ratios = [b / a for a, b in zip(w, r)]
m = statistics.median
print("| measure | median | min–max | target | |")
print("|---|---:|---:|---|---|")
print(f"| POST /work, 32 connections, without REDIS_URL, req/s | {m(w):,.0f} | {min(w):,.0f}–{max(w):,.0f} | | |")
print(f"| POST /work, 32 connections, with REDIS_URL (outbox + relay), req/s | {m(r):,.0f} | {min(r):,.0f}–{max(r):,.0f} | | |")
ratio = m(r) / m(w)
print(f"| with/without | {ratio:.2f} | {min(ratios):.2f}–{max(ratios):.2f} per round | ≥ 0.85 | {'met' if ratio >= 0.85 else '**missed**'} |")
print(f"| publish lag, p50, ms | {m(p50):.0f} | {min(p50):.0f}–{max(p50):.0f} | | |")
print(f"| publish lag, p99, ms | {m(p99):.0f} | {min(p99):.0f}–{max(p99):.0f} | < 100 | {'met' if m(p99) < 100 else '**missed**'} |")
PY
printf -- '- %s\n' "${notes[@]}"

[ "$kills" != 0 ] || exit 0
say "crash run: three instances, $kills SIGKILLs of the lease holder under load"
sql "TRUNCATE jobs, outbox" >/dev/null
start_redis
declare -a ports=() admins=()
start_instance() { # $1 index: (re)starts instance $1 on its ports
    env PORT="${ports[$1]}" ADMIN_PORT="${admins[$1]}" BIND_ADDRESS=127.0.0.1 RUST_LOG=warn \
        REDIS_URL="redis://127.0.0.1:$redis_port" LOCK_NAME=crash LOCK_TTL_MS="$crash_ttl" \
        "$drainer" >>"$out/crash-$1.log" 2>&1 &
    crash_pids[$1]=$!
    wait_ready "${ports[$1]}" "${crash_pids[$1]}" "instance $1" "$out/crash-$1.log" 10
}
holder() { # prints the index of the instance holding the lease, if any
    local i
    for i in 0 1 2; do
        curl -s "http://127.0.0.1:${admins[$i]}/metrics" | grep -qx 'drainer_lease_held 1' && {
            echo "$i"
            return 0
        }
    done
    return 1
}
wait_holder() { # waits up to three TTLs for a holder; prints its index
    local i h
    for ((i = 0; i < crash_ttl * 3 / 50; i++)); do
        h=$(holder) && {
            echo "$h"
            return 0
        }
        sleep 0.05
    done
    die "no instance took the lease within $((crash_ttl * 3)) ms"
}
for i in 0 1 2; do
    ports[i]=$(free_port)
    admins[i]=$(free_port)
    start_instance "$i"
done
for i in 0 1 2; do
    wrk -t1 -c11 -d600s -s bench/post_work.lua "http://127.0.0.1:${ports[$i]}/work" >/dev/null 2>&1 &
    wrk_pids[i]=$!
done
declare -a takeovers=()
for ((k = 1; k <= kills; k++)); do
    h=$(wait_holder)
    # Let it publish for a while (it is mid-round most of the time), then kill it.
    sleep 1
    before=$(sql "SELECT count(*) FROM outbox")
    kill -KILL "${crash_pids[$h]}"
    wait "${crash_pids[$h]}" 2>/dev/null || true
    t0=$(date +%s%N)
    start_instance "$h"
    n=$(wait_holder)
    takeovers+=("kill $k: instance $h (outbox $before rows at the kill); instance $n took the lease after $((($(date +%s%N) - t0) / 1000000)) ms")
done
sleep 1
for pid in "${wrk_pids[@]}"; do
    kill -INT "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
done
wrk_pids=()
declare -a rcs=()
for i in 0 1 2; do
    kill -TERM "${crash_pids[$i]}" 2>/dev/null || true
    reap "${crash_pids[$i]}" 60 "instance $i (after SIGTERM)"
    rcs+=("$reaped_rc")
done
crash_pids=()
left=$(sql "SELECT count(*) FROM outbox")
sql "COPY (SELECT id, 0 FROM jobs) TO STDOUT" >"$out/crash-jobs.tsv"
redis-cli -p "$redis_port" --raw XRANGE drainer:jobs - + >"$out/crash-stream.txt"
python3 - "$out/crash-jobs.tsv" "$out/crash-stream.txt" "$kills" "$crash_ttl" "$left" "${rcs[*]}" <<'PY'
import sys
jobs = {line.split("\t")[0] for line in open(sys.argv[1])}
lines = [l.rstrip("\n") for l in open(sys.argv[2])]
seen, entries, dup = set(), 0, 0
for i in range(0, len(lines), 7):
    fields = dict(zip(lines[i + 1:i + 7:2], lines[i + 2:i + 7:2]))
    entries += 1
    if fields["id"] in seen:
        dup += 1
    seen.add(fields["id"])
missing = len(jobs - seen)
print()
print(f"crash run: {sys.argv[3]} SIGKILLs of the lease holder, three instances, LOCK_TTL_MS={sys.argv[4]}; exit codes at the end {sys.argv[6]}")
print()
print("| committed jobs | stream entries | missing | duplicates | left in the outbox | target | |")
print("|---:|---:|---:|---:|---:|---|---|")
ok = missing == 0 and dup == 0
print(f"| {len(jobs):,} | {entries:,} | {missing} | {dup} | {sys.argv[5]} | 0 and 0 | {'met' if ok else '**missed**'} |")
PY
printf -- '- %s\n' "${takeovers[@]}"
