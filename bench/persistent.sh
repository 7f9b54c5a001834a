#!/usr/bin/env bash
# Benchmark drainer's persistent connections (/ws, /events, /poll); see docs/benchmarks.md.
#
#   scripts/with-postgres.sh bash bench/persistent.sh    (standalone: prints its table)
#   BENCH_PERSISTENT=only bash bench/run.sh              (from the driver, which also
#                                                        writes it into docs/benchmarks.md)
#
# Uses target/release/drainer and target/release/persistent-load (source:
# bench/persistent/), built here with cargo build --release -p drainer -p persistent-load
# unless bench/run.sh already did; needs wrk and PostgreSQL: without DATABASE_URL it
# re-executes itself under scripts/with-postgres.sh. Every measurement is repeated
# BENCH_PERSISTENT_ROUNDS times, each round on a fresh drainer process listening on a
# free loopback port (BIND_ADDRESS=127.0.0.1), started with `ulimit -n` raised to the
# hard limit:
#   drain, all polite   SHUTDOWN_DELAY_MS=0 WS_CLOSE_TIMEOUT_MS=5000; persistent-load drain
#                       --ws 1000 --sse 1000 --polls 1000; once all are open, SIGTERM: ms
#                       from just before `kill -TERM` to `wait` returning (target < 1000),
#                       and how many of each class the client counted clean
#   drain, 100 ignoring the same with --ignore-close 100 (target ≤ WS_CLOSE_TIMEOUT_MS +
#                       200 = 5200 ms)
#   idle RSS            VmRSS (/proc/PID/status) of the ready, idle server, then again 1 s
#                       after persistent-load idle --ws 10000 has them all open:
#                       (after - before) / sockets opened, KiB per socket (target < 64)
#   SSE fan-out         on one server per round: a warm-up, then POST /work throughput,
#                       wrk -t2 -c32 -d${BENCH_SECONDS}s --latency -s bench/post_work.lua (the
#                       32-connection case of bench/run.sh), first with no subscriber, then
#                       with persistent-load sse --subscribers 1000 open (none, with, none,
#                       with, ... over the rounds); each run starts from an empty jobs table
#                       (TRUNCATE, CHECKPOINT); target: with/none ≥ 0.8, and every
#                       subscriber got an event for every job committed during the run
#                       (rows in jobs, counted with psql once the run's jobs are in)
# prints a markdown table (median, min–max over the rounds, target, verdict), the
# per-round figures and notes on stdout; progress goes to stderr.
#
# Environment (all optional):
#   BENCH_PERSISTENT_ROUNDS=3   rounds of each measurement
#   BENCH_SECONDS=10            wrk duration of each throughput run
#   BENCH_WARMUP=2              warm-up before a round's throughput runs, seconds (0: none)
#   BENCH_THREADS=2             wrk -t
#   BENCH_OUT=<dir>             keep the raw outputs and logs in <dir>/persistent
# Smoke run: BENCH_PERSISTENT_ROUNDS=1 BENCH_SECONDS=3 scripts/with-postgres.sh bash bench/persistent.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
prog=bench/persistent.sh
# shellcheck source=bench/common.sh
. bench/common.sh


# wait -n -p (bash 5.1) times the server's exit; /proc gives its memory.
if ((BASH_VERSINFO[0] < 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] < 1))); then
    die "needs bash 5.1 or later (this is $BASH_VERSION)"
fi
[ -r /proc/self/status ] || die "needs Linux (/proc/PID/status for the server's VmRSS)"

rounds=${BENCH_PERSISTENT_ROUNDS:-3}
duration=${BENCH_SECONDS:-10}
warmup=${BENCH_WARMUP:-2}
threads=${BENCH_THREADS:-2}
posint BENCH_PERSISTENT_ROUNDS "$rounds"
posint BENCH_SECONDS "$duration"
posint BENCH_THREADS "$threads"
[[ "$warmup" =~ ^[0-9]+$ ]] || die "BENCH_WARMUP must be a non-negative integer, got '$warmup'"

# The sizes the targets are stated for.
n_ws=1000 n_sse=1000 n_polls=1000 n_ignoring=100
close_timeout_ms=5000
n_idle=10000
n_subscribers=1000
conns=32
wrk_threads=$((threads < conns ? threads : conns))

# --- tools and binaries (done once, before a database is started) -------------------
if [ -z "${_BENCH_PREPARED:-}" ]; then
    command -v python3 >/dev/null || die "python3 is required"
    command -v psql >/dev/null || die "psql is required (Debian/Ubuntu: apt-get install postgresql-client)"
    need_wrk
    say "cargo build --release -p drainer -p persistent-load"
    cargo build --release -p drainer -p persistent-load
    export _BENCH_PREPARED=1
fi

# --- database ------------------------------------------------------------------------
if [ -z "${DATABASE_URL:-}" ]; then
    under_postgres "$root/bench/persistent.sh" "$@"
fi

target_dir=${CARGO_TARGET_DIR:-$root/target}
drainer=$target_dir/release/drainer
load=$target_dir/release/persistent-load
[ -x "$drainer" ] || die "$drainer not found (cargo build --release -p drainer)"
[ -x "$load" ] || die "$load not found (cargo build --release -p persistent-load)"
nofile=$(ulimit -Hn)
if [ "$nofile" != unlimited ] && ((nofile < n_idle + 1000)); then
    die "the open-file hard limit ($nofile) is too low for $n_idle idle WebSockets: raise it to $((n_idle + 1000)) or more"
fi

out=${BENCH_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/drainer-bench.XXXXXX")}
pout=$out/persistent
mkdir -p "$pout"
say "persistent: raw outputs and logs: $pout"

# --- processes -------------------------------------------------------------------------
server_pid=
clients=() # load clients still to be reaped
cleanup() {
    local pid
    for pid in "${clients[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${clients[@]}"; do wait "$pid" 2>/dev/null || true; done
    clients=()
    stop_server
}
trap 'cleanup' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


start_drainer() { # $1 port, $2 log file, then NAME=value ... for its environment; sets server_pid
    local port=$1 log=$2 i
    shift 2
    # The fd limit is raised in the subshell that becomes the server (exec), so that
    # it can hold $n_idle sockets; this shell's own limit is left alone.
    : >"$log" # exists before the server has opened it, for the readiness check below
    (ulimit -n "$(ulimit -Hn)" && exec env PORT="$port" BIND_ADDRESS=127.0.0.1 "$@" "$drainer") >>"$log" 2>&1 &
    server_pid=$!
    for ((i = 0; i < 300; i++)); do # 30 s
        if ! kill -0 "$server_pid" 2>/dev/null; then
            server_pid=
            tail -n 20 "$log" >&2
            die "drainer exited during startup (log: $log)"
        fi
        if grep -q 'listening on' "$log"; then
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$log" >&2
    die "drainer has not logged 'listening on' after 30 s (log: $log)"
}

start_client() { # $1 stdout file, $2 stderr file, then persistent-load's arguments; sets client_pid
    local json=$1 log=$2
    shift 2
    "$load" "$@" >"$json" 2>"$log" &
    client_pid=$!
    clients+=("$client_pid")
}

wait_ready() { # $1 ready file, $2 client log, $3 seconds: the client creates it, or die
    local file=$1 log=$2 limit=$3 i
    for ((i = 0; i < limit * 10; i++)); do
        [ -e "$file" ] && return 0
        kill -0 "$client_pid" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 20 "$log" >&2
    if kill -0 "$client_pid" 2>/dev/null; then
        die "persistent-load has not opened its connections after $limit s (log: $log)"
    fi
    die "persistent-load exited before it had opened its connections (log: $log)"
}

reap_client() { # $1 seconds to wait for client_pid to exit (SIGKILL past it); sets client_rc
    local pid=$client_pid
    reap "$pid" "$1" persistent-load
    client_rc=$reaped_rc
    local kept=() p
    for p in "${clients[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
    clients=("${kept[@]}")
}

term_timed() { # SIGTERM the server and wait for it (at most 60 s); sets exit_ms, server_rc
    local pid=$server_pid timer t0 t1 us0 us1 done_pid=
    server_pid=
    sleep 60 &
    timer=$!
    t0=$EPOCHREALTIME
    kill -TERM "$pid"
    server_rc=0
    wait -n -p done_pid "$pid" "$timer" || server_rc=$?
    t1=$EPOCHREALTIME
    if [ "$done_pid" = "$pid" ]; then
        kill "$timer" 2>/dev/null || true
        wait "$timer" 2>/dev/null || true
    else
        echo "$prog: server $pid still running 60 s after SIGTERM, killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        server_rc=0
        wait "$pid" 2>/dev/null || server_rc=$?
    fi
    us0=${t0//[!0-9]/} us1=${t1//[!0-9]/} # EPOCHREALTIME has 6 decimals: microseconds
    exit_ms=$(((us1 - us0) / 1000)).$(((us1 - us0) % 1000 / 100))
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

jobs_count() { psql -X -At "$DATABASE_URL" -c 'select count(*) from jobs'; }

# --- drain: all polite, then 100 that never answer the Close ---------------------------
drain_round() { # $1 name, $2 round, $3 WebSockets that ignore the Close
    local name=$1 r=$2 ignoring=$3 port base
    base=$pout/drain-$name.$r
    port=$(free_port)
    say "persistent round $r/$rounds, drain ($name): $n_ws WebSockets ($ignoring ignoring the Close), $n_sse SSE, $n_polls polls, port $port"
    start_drainer "$port" "$base.server.log" SHUTDOWN_DELAY_MS=0 WS_CLOSE_TIMEOUT_MS=$close_timeout_ms
    rm -f "$base.ready"
    start_client "$base.json" "$base.client.log" drain --addr "127.0.0.1:$port" --ws "$n_ws" \
        --ignore-close "$ignoring" --sse "$n_sse" --polls "$n_polls" --ready-file "$base.ready"
    wait_ready "$base.ready" "$base.client.log" 120
    term_timed
    reap_client 60 # the client gives up on what is still open 30 s after ready
    echo "$exit_ms $server_rc $client_rc" >"$base.exit"
    echo "   SIGTERM -> exit: $exit_ms ms, exit status $server_rc" >&2
    grep -m1 'shutdown report:' "$base.server.log" >"$base.report" || true
    if [ "$client_rc" != 0 ] || [ ! -s "$base.json" ]; then
        die "persistent-load drain failed (status $client_rc, log: $base.client.log)"
    fi
}

# --- memory per idle WebSocket -----------------------------------------------------
idle_round() { # $1 round
    local r=$1 port base before after
    base=$pout/idle.$r
    port=$(free_port)
    say "persistent round $r/$rounds, RSS: $n_idle idle WebSockets, port $port"
    start_drainer "$port" "$base.server.log"
    sleep 1 # ready and idle
    before=$(rss_kib "$server_pid")
    rm -f "$base.ready"
    start_client "$base.json" "$base.client.log" idle --addr "127.0.0.1:$port" --ws "$n_idle" --ready-file "$base.ready"
    wait_ready "$base.ready" "$base.client.log" 180
    sleep 1
    after=$(rss_kib "$server_pid")
    echo "$before $after" >"$base.rss"
    kill -TERM "$client_pid" 2>/dev/null || true
    reap_client 30
    stop_server
    echo "$server_rc" >"$base.rc"
    echo "   VmRSS $before -> $after KiB" >&2
    if [ "$client_rc" != 0 ] || [ ! -s "$base.json" ]; then
        die "persistent-load idle failed (status $client_rc, log: $base.client.log)"
    fi
}

# --- POST /work throughput, without and with SSE subscribers ----------------------------
throughput_round() { # $1 round
    local r=$1 port base url cond c0 c1
    base=$pout/sse.$r
    port=$(free_port)
    say "persistent round $r/$rounds, POST /work without and with $n_subscribers SSE subscribers, port $port"
    start_drainer "$port" "$base.server.log"
    url=http://127.0.0.1:$port/work
    if ((warmup > 0)); then
        wrk -t"$wrk_threads" -c"$conns" -d"${warmup}s" -s bench/post_work.lua "$url" >"$base.warmup.txt"
    fi
    for cond in none with; do
        if [ "$cond" = with ]; then
            rm -f "$base.ready"
            # --seconds only bounds it: it is stopped with SIGTERM after the run.
            start_client "$base.with.json" "$base.client.log" sse --addr "127.0.0.1:$port" \
                --subscribers "$n_subscribers" --ready-file "$base.ready" --seconds $((duration + 120))
            wait_ready "$base.ready" "$base.client.log" 120
        fi
        # Each run starts from an empty table (and counts its own jobs).
        psql -X -q "$DATABASE_URL" -c 'TRUNCATE jobs' -c 'CHECKPOINT' >/dev/null 2>&1 || true
        c0=$(jobs_count)
        wrk -t"$wrk_threads" -c"$conns" -d"${duration}s" --latency -s bench/post_work.lua "$url" >"$base.$cond.wrk.txt"
        sleep 1 # the jobs wrk left in flight commit, and their events reach the subscribers
        c1=$(jobs_count)
        echo "$((c1 - c0))" >"$base.$cond.jobs"
        grep -E 'Requests/sec|errors|Non-2xx' "$base.$cond.wrk.txt" | sed "s/^ */   $cond: /" >&2 || true
        if [ "$cond" = with ]; then
            kill -TERM "$client_pid" 2>/dev/null || true
            reap_client 30
            if [ "$client_rc" != 0 ] || [ ! -s "$base.with.json" ]; then
                die "persistent-load sse failed (status $client_rc, log: $base.client.log)"
            fi
        fi
    done
    stop_server
    echo "$server_rc" >"$base.rc"
}

for ((r = 1; r <= rounds; r++)); do
    drain_round polite "$r" 0
    drain_round ignoring "$r" "$n_ignoring"
    idle_round "$r"
    throughput_round "$r"
done

# --- report ------------------------------------------------------------------------
export _P_WS=$n_ws _P_SSE=$n_sse _P_POLLS=$n_polls _P_IGNORING=$n_ignoring _P_CLOSE_MS=$close_timeout_ms
export _P_IDLE=$n_idle _P_SUBSCRIBERS=$n_subscribers
export _P_WRK="wrk -t$wrk_threads -c$conns -d${duration}s --latency -s bench/post_work.lua"
export _P_WARMUP=$warmup
python3 - "$pout" "$rounds" <<'PY'
import json, os, re, statistics, sys

out, rounds = sys.argv[1], int(sys.argv[2])
env = os.environ
n_ws, n_sse, n_polls = int(env["_P_WS"]), int(env["_P_SSE"]), int(env["_P_POLLS"])
n_ign, close_ms = int(env["_P_IGNORING"]), int(env["_P_CLOSE_MS"])
n_idle, n_sub = int(env["_P_IDLE"]), int(env["_P_SUBSCRIBERS"])

def read(name):
    with open(f"{out}/{name}") as fh:
        return fh.read()

def last_json(name):
    return json.loads(read(name).strip().splitlines()[-1])

def num(pattern, text, default=None):
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else default

def parse_wrk(text):
    rps = num(r"^Requests/sec:\s+([\d.]+)", text)
    if rps is None:
        raise SystemExit(f"cannot parse wrk output:\n{text}")
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = sum(map(int, sock.groups())) if sock else 0
    non2xx = int(num(r"Non-2xx or 3xx responses:\s+(\d+)", text, 0))
    requests = int(num(r"^\s*(\d+) requests in", text, 0))
    return {"rps": rps, "errors": errors + non2xx, "ok": requests - non2xx}

drain = {}
for name in ("polite", "ignoring"):
    drain[name] = []
    for r in range(1, rounds + 1):
        ms, rc, _ = read(f"drain-{name}.{r}.exit").split()
        d = last_json(f"drain-{name}.{r}.json")
        d["exit_ms"], d["rc"] = float(ms), rc
        # The drainer's one-line summary, without the log line's timestamp and target.
        d["report"] = re.sub(r"^.*?(?=shutdown report:)", "", read(f"drain-{name}.{r}.report").strip())
        drain[name].append(d)
idle = []
for r in range(1, rounds + 1):
    before, after = map(int, read(f"idle.{r}.rss").split())
    j = last_json(f"idle.{r}.json")
    opened = j["opened"]
    idle.append({"before": before, "after": after, "opened": opened, "failed": j["open_failed"],
                 "per_socket": (after - before) / opened if opened else float("nan"),
                 "rc": read(f"idle.{r}.rc").strip(), "errors": j["open_errors"]})
tput = []
for r in range(1, rounds + 1):
    none, with_ = parse_wrk(read(f"sse.{r}.none.wrk.txt")), parse_wrk(read(f"sse.{r}.with.wrk.txt"))
    s = last_json(f"sse.{r}.with.json")
    tput.append({"none": none, "with": with_, "ratio": with_["rps"] / none["rps"] if none["rps"] else 0.0,
                 "jobs": int(read(f"sse.{r}.with.jobs")), "sse": s, "rc": read(f"sse.{r}.rc").strip()})

def med(vals):
    return statistics.median(vals)

def span(vals, fmt):
    return f"{format(min(vals), fmt)}–{format(max(vals), fmt)}"

def verdict(ok):
    return "met" if ok else "**missed**"

def row(label, vals, fmt, target="", check=None):
    m = med(vals)
    return f"| {label} | {format(m, fmt)} | {span(vals, fmt)} | {target} | {verdict(check(m)) if check else ''} |"

lines = ["| measure | median | min–max | target | met? |", "|---|---:|---:|---|---|"]
p, g = drain["polite"], drain["ignoring"]
lines.append(row("drain, all polite: SIGTERM → exit, ms", [d["exit_ms"] for d in p], ".1f",
                 "< 1000", lambda m: m < 1000))
for key, label, n in (("ws", "WebSockets", n_ws), ("sse", "SSE streams", n_sse), ("poll", "polls", n_polls)):
    lines.append(row(f"drain, all polite: {label} ended clean (of {n:,})", [d[key]["clean"] for d in p], ",d"))
limit = close_ms + 200
lines.append(row(f"drain, {n_ign} ignoring the Close: SIGTERM → exit, ms", [d["exit_ms"] for d in g], ".1f",
                 f"≤ {limit} (WS_CLOSE_TIMEOUT_MS {close_ms} + 200)", lambda m: m <= limit))
for key, label, n in (("ws", "polite WebSockets", n_ws - n_ign), ("sse", "SSE streams", n_sse),
                      ("poll", "polls", n_polls)):
    lines.append(row(f"drain, {n_ign} ignoring: {label} ended clean (of {n:,})", [d[key]["clean"] for d in g], ",d"))
lines.append(row(f"drain, {n_ign} ignoring: ignoring WebSockets closed by the server (of {n_ign})",
                 [d["ws_ignoring"]["closed_by_server"] for d in g], ",d"))
lines.append(row(f"RSS per idle WebSocket ({n_idle:,} open), KiB", [i["per_socket"] for i in idle], ".1f",
                 "< 64", lambda m: m < 64))
nr, wr = [t["none"]["rps"] for t in tput], [t["with"]["rps"] for t in tput]
lines.append(row("POST /work, no subscriber, requests/s", nr, ",.0f"))
lines.append(row(f"POST /work, {n_sub:,} SSE subscribers, requests/s", wr, ",.0f"))
ratio_of_medians = med(wr) / med(nr) if med(nr) else 0.0
ratios = [t["ratio"] for t in tput]
lines.append(f"| POST /work, with/none (median: of the medians; min–max: per round) | {ratio_of_medians:.2f} | "
             f"{span(ratios, '.2f')} | ≥ 0.8 | {verdict(ratio_of_medians >= 0.8)} |")
lines.append(row("jobs committed during the run with subscribers (rows in jobs)", [t["jobs"] for t in tput], ",d"))
every = all(t["sse"]["min_per_stream"] == t["jobs"] and t["sse"]["opened"] == n_sub for t in tput)
lines.append(row("SSE: events per subscriber, fewest", [t["sse"]["min_per_stream"] or 0 for t in tput], ",d",
                 "= jobs committed, every round", lambda m: every))
lines.append(row("SSE: events_total", [t["sse"]["events_total"] for t in tput], ",d",
                 f"= {n_sub:,} × jobs committed, every round",
                 lambda m: all(t["sse"]["events_total"] == n_sub * t["jobs"] for t in tput)))

def classes(d, ignoring=False):
    s = f"{d['ws']['clean']}/{d['sse']['clean']}/{d['poll']['clean']}"
    if ignoring:
        s += f", {d['ws_ignoring']['closed_by_server']} closed"
    return s

detail = ["| round | polite: exit ms (status), clean ws/sse/poll, ended_ms | "
          f"{n_ign} ignoring: exit ms (status), clean ws/sse/poll, ignoring closed, ended_ms | "
          "idle: VmRSS before → after KiB, opened, KiB/socket | req/s none / with (ratio) | "
          "jobs, events per subscriber min–max, events_total |",
          "|---:|---|---|---|---|---|"]
for r in range(rounds):
    a, b, i, t = p[r], g[r], idle[r], tput[r]
    s = t["sse"]
    detail.append(
        f"| {r + 1} | {a['exit_ms']:.1f} ({a['rc']}), {classes(a)}, {a['ended_ms']} | "
        f"{b['exit_ms']:.1f} ({b['rc']}), {classes(b, True)}, {b['ended_ms']} | "
        f"{i['before']:,} → {i['after']:,}, {i['opened']:,}, {i['per_socket']:.1f} | "
        f"{t['none']['rps']:,.0f} / {t['with']['rps']:,.0f} ({t['ratio']:.2f}) | "
        f"{t['jobs']:,}, {s['min_per_stream']}–{s['max_per_stream']}, {s['events_total']:,} |")

notes = []
for name, runs in (("all polite", p), (f"{n_ign} ignoring", g)):
    for r, d in enumerate(runs, 1):
        if d["rc"] != "0":
            notes.append(f"- **drain, {name}, round {r}: drainer exited with status {d['rc']}**")
        for key in ("ws", "ws_ignoring", "sse", "poll"):
            c = d[key]
            if c["open_failed"]:
                notes.append(f"- drain, {name}, round {r}: {c['open_failed']} {key} failed to open: {c['open_errors']}")
            if c["reasons"]:
                notes.append(f"- drain, {name}, round {r}: {key} not clean: {c['reasons']}")
        if d["timed_out"]:
            notes.append(f"- **drain, {name}, round {r}: {d['still_open']} connections still open 30 s after ready**")
for r, i in enumerate(idle, 1):
    if i["failed"]:
        notes.append(f"- idle, round {r}: {i['failed']} of {n_idle} WebSockets failed to open: {i['errors']}")
    if i["rc"] != "0":
        notes.append(f"- idle, round {r}: drainer exited with status {i['rc']} after SIGTERM")
for r, t in enumerate(tput, 1):
    s = t["sse"]
    for cond in ("none", "with"):
        if t[cond]["errors"]:
            notes.append(f"- **throughput, round {r}, {cond}: {t[cond]['errors']} wrk errors (socket + non-2xx)**")
    if s["open_failed"]:
        notes.append(f"- SSE, round {r}: {s['open_failed']} subscribers failed to open: {s['open_errors']}")
    if s["ended_early"]:
        notes.append(f"- **SSE, round {r}: {s['ended_early']} streams ended before the run did: {s['ended_early_reasons']}**")
    if t["with"]["ok"] != t["jobs"]:
        notes.append(f"- SSE, round {r}: wrk counted {t['with']['ok']:,} 2xx answers, the table {t['jobs']:,} new jobs "
                     "(wrk does not count the requests in flight when it stops)")
    if t["rc"] != "0":
        notes.append(f"- throughput, round {r}: drainer exited with status {t['rc']} after SIGTERM")
for name, runs in (("all polite", p), (f"{n_ign} ignoring", g)):
    if runs[0]["report"]:
        notes.append(f"- drain, {name}, round 1, drainer's `{runs[0]['report']}`")

print("\n".join([
    f"Persistent connections ([`bench/persistent.sh`](../bench/persistent.sh), client: "
    "[`bench/persistent/`](../bench/persistent/src/main.rs)): "
    f"{rounds} round{'s' if rounds > 1 else ''}, each measurement on a fresh drainer process:",
    f"drain: `SHUTDOWN_DELAY_MS=0 WS_CLOSE_TIMEOUT_MS={close_ms}`, `persistent-load drain --ws {n_ws} "
    f"--sse {n_sse} --polls {n_polls}` (and `--ignore-close {n_ign}`), SIGTERM once all are open, "
    "timed from just before `kill -TERM` to `wait` returning;",
    f"RSS: VmRSS of the idle server, then 1 s after `persistent-load idle --ws {n_idle}` is ready;",
    f"throughput: after a {env['_P_WARMUP']} s warm-up, `{env['_P_WRK']}` without, then with "
    f"`persistent-load sse --subscribers {n_sub}` open, on the same server, each from an empty `jobs` table.",
    "",
    *lines,
    "",
    "Per persistent round:",
    "",
    *detail,
    *([""] + notes if notes else []),
]))
PY
