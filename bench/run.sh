#!/usr/bin/env bash
# Benchmark drainer against the bare actix-web baseline (bench/bare); see docs/benchmarks.md.
#
#   make bench                     (or: bench/run.sh)
#
# Builds both release binaries, needs wrk (installed with apt-get when running as
# root) and PostgreSQL: without DATABASE_URL it re-executes itself under
# scripts/with-postgres.sh, which provides a throwaway cluster. Then:
#   throughput  BENCH_ROUNDS interleaved rounds per build (drainer, bare, drainer, ...)
#               at each of BENCH_CONNECTIONS (1 32 256), each on a fresh server:
#               warm-up, then wrk -c<n> -d${BENCH_SECONDS}s --latency -s bench/post_work.lua
#               against a durable throwaway PostgreSQL (PG_DURABLE=1)
#   exit        bench/exit_latency.py, BENCH_EXIT_RUNS runs per build
#   stdin       bench/stdin_bench.py: drainer --stdin, BENCH_STDIN_COUNT requests
#               (100000), BENCH_STDIN_RUNS runs (3)
#   hello       the engine's hello example (actors/examples/hello.rs, run with WORKERS=2)
#               against the same handler on actix-web's own HttpServer
#               (bench/bare/src/bin/hello.rs, .workers(2)), no database:
#               BENCH_HELLO_ROUNDS interleaved rounds (engine, httpserver, engine, ...),
#               each on a fresh server: warm-up, then
#               wrk -t2 -c64 -d${BENCH_HELLO_SECONDS}s --latency 'http://127.0.0.1:<port>/?delay_ms=0'
#               and SIGTERM (the exit status is recorded); built with
#               cargo build --release -p drainer-engine --example hello  (target/release/examples/hello)
#               cargo build --release -p bare --bin hello                (target/release/hello)
#   persistent  bench/persistent.sh, drainer only, BENCH_PERSISTENT_ROUNDS rounds, each
#               measurement on a fresh server: SIGTERM-to-exit time with 1000 WebSockets,
#               1000 SSE streams and 1000 pending polls open (all polite, then 100 that
#               ignore the Close), RSS per idle WebSocket (10,000 open), and POST /work
#               throughput (wrk -c32) without and with 1000 SSE subscribers; its client is
#               cargo build --release -p persistent-load (target/release/persistent-load)
#   relay       bench/relay.sh, drainer only: POST /work (wrk -c32) without and with
#               REDIS_URL (outbox + relay) and the publish lag, BENCH_RELAY_ROUNDS rounds;
#               then the crash run, BENCH_RELAY_KILLS SIGKILLs of the lease holder among
#               three instances under load, the stream compared with the jobs table
# prints a markdown table of medians and drainer/bare ratios (and one of the hello
# medians, spreads and engine/httpserver ratios, and the persistent section's) and writes
# them into the results section of docs/benchmarks.md.
#
# Environment (all optional):
#   BENCH_ROUNDS=3 BENCH_SECONDS=10 BENCH_WARMUP=2 BENCH_EXIT_RUNS=20
#   BENCH_THREADS=2 BENCH_CONNECTIONS=64     wrk -t / -c
#   BENCH_BUILDS="drainer bare"              builds to run (e.g. "bare" for a smoke test)
#   BENCH_HELLO=1                            0: skip the hello section; only: run the hello
#                                            section alone (no PostgreSQL, no drainer or bare
#                                            build; prints its table, leaves the docs alone)
#   BENCH_HELLO_ROUNDS=3                     hello rounds per build
#   BENCH_HELLO_SECONDS=$BENCH_SECONDS       wrk duration per hello round
#   BENCH_PERSISTENT=1                       0: skip the persistent section; only: run the
#                                            persistent section alone (drainer and
#                                            persistent-load builds and PostgreSQL, no bare
#                                            build, no hello; prints its table and rewrites
#                                            only its part of the docs' results section)
#   BENCH_PERSISTENT_ROUNDS=3                rounds of each persistent measurement
#   BENCH_RELAY=1                            0: skip the relay section (not run with =only above)
#   BENCH_RELAY_ROUNDS=3 BENCH_RELAY_KILLS=5 relay rounds; SIGKILLs in the crash run (0: none)
#   BENCH_WRITE_DOCS=1                       0: do not touch docs/benchmarks.md
#   BENCH_OUT=<dir>                          keep wrk outputs and server logs there
# Quick smoke run: BENCH_ROUNDS=1 BENCH_SECONDS=2 BENCH_WARMUP=1 BENCH_EXIT_RUNS=3 bench/run.sh
# Hello section alone: BENCH_HELLO=only bench/run.sh
#   (smoke: BENCH_HELLO=only BENCH_HELLO_ROUNDS=1 BENCH_SECONDS=2 BENCH_WARMUP=1 bench/run.sh)
# Persistent section alone: BENCH_PERSISTENT=only bench/run.sh
#   (smoke: BENCH_PERSISTENT=only BENCH_PERSISTENT_ROUNDS=1 BENCH_SECONDS=3 bench/run.sh;
#   without the driver: scripts/with-postgres.sh bash bench/persistent.sh)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
prog=bench/run.sh
# shellcheck source=bench/common.sh
. bench/common.sh


rounds=${BENCH_ROUNDS:-3}
duration=${BENCH_SECONDS:-10}
warmup=${BENCH_WARMUP:-2}
exit_runs=${BENCH_EXIT_RUNS:-20}
threads=${BENCH_THREADS:-2}
conns_list=${BENCH_CONNECTIONS:-1 32 256}
builds=${BENCH_BUILDS:-drainer bare}
write_docs=${BENCH_WRITE_DOCS:-1}
hello=${BENCH_HELLO:-1}
hello_rounds=${BENCH_HELLO_ROUNDS:-3}
hello_duration=${BENCH_HELLO_SECONDS:-$duration}
hello_conns=64
persistent=${BENCH_PERSISTENT:-1}
persistent_rounds=${BENCH_PERSISTENT_ROUNDS:-3}
posint BENCH_ROUNDS "$rounds"
posint BENCH_SECONDS "$duration"
posint BENCH_EXIT_RUNS "$exit_runs"
posint BENCH_THREADS "$threads"
for c in $conns_list; do posint BENCH_CONNECTIONS "$c"; done
[[ "$warmup" =~ ^[0-9]+$ ]] || die "BENCH_WARMUP must be a non-negative integer, got '$warmup'"
for b in $builds; do
    case $b in drainer | bare) ;; *) die "BENCH_BUILDS: unknown build '$b' (drainer, bare)" ;; esac
done
[ -n "${builds// /}" ] || die "BENCH_BUILDS is empty"
case $hello in 0 | 1 | only) ;; *) die "BENCH_HELLO must be 0, 1 or only, got '$hello'" ;; esac
posint BENCH_HELLO_ROUNDS "$hello_rounds"
posint BENCH_HELLO_SECONDS "$hello_duration"
# The hello section alone: no drainer or bare build, so every section that loops
# over $builds (throughput, exit latency, stdin) does nothing.
[ "$hello" != only ] || builds=
case $persistent in 0 | 1 | only) ;; *) die "BENCH_PERSISTENT must be 0, 1 or only, got '$persistent'" ;; esac
posint BENCH_PERSISTENT_ROUNDS "$persistent_rounds"
if [ "$hello" = only ] && [ "$persistent" = only ]; then
    die "BENCH_HELLO=only and BENCH_PERSISTENT=only exclude each other"
fi
[ "$hello" != only ] || persistent=0
# The persistent section alone: no bare build and no hello section; the sections that
# loop over $builds do nothing (the persistent section finds the drainer binary itself).
if [ "$persistent" = only ]; then
    builds=
    hello=0
fi

# --- tools and binaries (done once, before a database is started) -------------------
if [ -z "${_BENCH_PREPARED:-}" ]; then
    command -v python3 >/dev/null || die "python3 is required"
    need_wrk
    if [ "$hello" != only ]; then
        pkgs=()
        for b in $builds; do pkgs+=(-p "$b"); done
        if [ "$persistent" != 0 ]; then
            [[ " $builds " == *" drainer "* ]] || pkgs+=(-p drainer)
            pkgs+=(-p persistent-load)
        fi
        say "cargo build --release ${pkgs[*]}"
        cargo build --release "${pkgs[@]}"
    fi
    if [ "$hello" != 0 ]; then
        say "cargo build --release -p drainer-engine --example hello"
        cargo build --release -p drainer-engine --example hello
        say "cargo build --release -p bare --bin hello"
        cargo build --release -p bare --bin hello
    fi
    export _BENCH_PREPARED=1
fi

# --- database (not for the hello section alone) --------------------------------------
if [ "$hello" != only ] && [ -z "${DATABASE_URL:-}" ]; then
    under_postgres "$root/bench/run.sh" "$@"
fi

target_dir=${CARGO_TARGET_DIR:-$root/target}
declare -A bin
for b in $builds; do
    bin[$b]=$target_dir/release/$b
    [ -x "${bin[$b]}" ] || die "${bin[$b]} not found (cargo build --release -p $b)"
done
if [ "$hello" != 0 ]; then
    bin[engine]=$target_dir/release/examples/hello
    bin[httpserver]=$target_dir/release/hello
    [ -x "${bin[engine]}" ] || die "${bin[engine]} not found (cargo build --release -p drainer-engine --example hello)"
    [ -x "${bin[httpserver]}" ] || die "${bin[httpserver]} not found (cargo build --release -p bare --bin hello)"
fi

out=${BENCH_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/drainer-bench.XXXXXX")}
mkdir -p "$out"
say "raw outputs and server logs: $out"

# --- server lifecycle --------------------------------------------------------------
server_pid=
trap 'stop_server' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


start_server() { # $1 build, $2 port, $3 log file, then NAME=value ... for its environment
    local build=$1 port=$2 log=$3 i
    shift 3
    env PORT="$port" "$@" "${bin[$build]}" >>"$log" 2>&1 &
    server_pid=$!
    for ((i = 0; i < 300; i++)); do # 30 s
        if ! kill -0 "$server_pid" 2>/dev/null; then
            server_pid=
            tail -n 20 "$log" >&2
            die "$build exited during startup (log: $log)"
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            sleep 0.1 # let the probe connection go away
            return 0
        fi
        sleep 0.1
    done
    tail -n 20 "$log" >&2
    die "$build is not accepting connections on port $port after 30 s (log: $log)"
}

# --- throughput: interleaved rounds, at each connection count -----------------------
for ((r = 1; r <= rounds; r++)); do
    for c in $conns_list; do
        t=$((threads < c ? threads : c))
        for b in $builds; do
            # Every round starts from the same database state: no rows, no
            # dirty pages left by the round before to be flushed during this one.
            psql -X -q "$DATABASE_URL" -c 'TRUNCATE jobs' -c 'CHECKPOINT' >/dev/null 2>&1 || true
            port=$(free_port)
            log=$out/$b.log
            echo "=== round $r, $c connections, port $port" >>"$log"
            say "round $r/$rounds, $c connection(s): $b on port $port"
            start_server "$b" "$port" "$log"
            url=http://127.0.0.1:$port/work
            if ((warmup > 0)); then
                wrk -t"$t" -c"$c" -d"${warmup}s" -s bench/post_work.lua "$url" >"$out/$b.c$c.$r.warmup.txt"
            fi
            wrk -t"$t" -c"$c" -d"${duration}s" --latency -s bench/post_work.lua "$url" >"$out/$b.c$c.$r.wrk.txt"
            stop_server
            echo "$server_rc" >"$out/$b.c$c.$r.rc"
            grep -E 'Requests/sec| 50%| 99%|errors|Non-2xx' "$out/$b.c$c.$r.wrk.txt" | sed 's/^ */   /' >&2 || true
            [ "$server_rc" = 0 ] || echo "$prog: warning: $b exited with status $server_rc after SIGTERM" >&2
        done
    done
done

# --- exit latency ------------------------------------------------------------------
for b in $builds; do
    say "exit latency: $b, $exit_runs runs"
    python3 bench/exit_latency.py --runs "$exit_runs" --log "$out/$b.exit.log" -- "${bin[$b]}" |
        tee "$out/$b.exit.txt" | grep -v '^{' >&2 || true
    tail -n 1 "$out/$b.exit.txt" | grep -q '^{' || die "exit_latency.py produced no summary for $b (see $out/$b.exit.log)"
done

# --- stdin mode ----------------------------------------------------------------------
if [[ " $builds " == *" drainer "* ]]; then
    say "stdin mode: ${BENCH_STDIN_COUNT:-100000} requests, ${BENCH_STDIN_RUNS:-3} runs"
    python3 bench/stdin_bench.py --json --runs "${BENCH_STDIN_RUNS:-3}" --count "${BENCH_STDIN_COUNT:-100000}" \
        -- "${bin[drainer]}" >"$out/stdin.json" || die "stdin_bench.py failed"
fi

# --- hello: the engine's example against the same handler on HttpServer -------------
if [ "$hello" != 0 ]; then
    ht=$((threads < hello_conns ? threads : hello_conns))
    for ((r = 1; r <= hello_rounds; r++)); do
        for b in engine httpserver; do
            port=$(free_port)
            log=$out/hello.$b.log
            echo "=== hello round $r, port $port" >>"$log"
            say "hello round $r/$hello_rounds, $hello_conns connections: $b on port $port"
            case $b in
                engine) start_server "$b" "$port" "$log" WORKERS=2 ;;
                *) start_server "$b" "$port" "$log" ;; # .workers(2) in its code
            esac
            url="http://127.0.0.1:$port/?delay_ms=0"
            if ((warmup > 0)); then
                wrk -t"$ht" -c"$hello_conns" -d"${warmup}s" "$url" >"$out/hello.$b.$r.warmup.txt"
            fi
            wrk -t"$ht" -c"$hello_conns" -d"${hello_duration}s" --latency "$url" >"$out/hello.$b.$r.wrk.txt"
            stop_server
            echo "$server_rc" >"$out/hello.$b.$r.rc"
            grep -E 'Requests/sec| 50%| 99%|errors|Non-2xx' "$out/hello.$b.$r.wrk.txt" | sed 's/^ */   /' >&2 || true
            [ "$server_rc" = 0 ] || echo "$prog: warning: hello $b exited with status $server_rc after SIGTERM" >&2
        done
    done
fi

# --- persistent connections: drain, idle memory, SSE fan-out (bench/persistent.sh) ----
if [ "$persistent" != 0 ]; then
    say "persistent connections: $persistent_rounds round(s) of bench/persistent.sh"
    BENCH_OUT=$out BENCH_PERSISTENT_ROUNDS=$persistent_rounds BENCH_SECONDS=$duration \
        BENCH_WARMUP=$warmup BENCH_THREADS=$threads bash bench/persistent.sh >"$out/persistent.md" ||
        die "bench/persistent.sh failed (raw outputs and logs: $out/persistent)"
fi

# --- the outbox and the relay, and the crash run (bench/relay.sh) ---------------------
if [ "${BENCH_RELAY:-1}" = 1 ] && [ "$persistent" != only ] && [ "$hello" != only ]; then
    say "outbox and relay: ${BENCH_RELAY_ROUNDS:-3} round(s) of bench/relay.sh"
    BENCH_SECONDS=$duration BENCH_WARMUP=$warmup bash bench/relay.sh >"$out/relay.md" ||
        die "bench/relay.sh failed"
fi

# --- report ------------------------------------------------------------------------
mem_kib=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo 2>/dev/null || true)
cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
export BENCH_DATE BENCH_MACHINE BENCH_PARAMS BENCH_COMMIT
BENCH_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
BENCH_MACHINE="$(nproc) CPUs ($cpu), $(awk -v k="${mem_kib:-0}" 'BEGIN { printf "%.1f", k / 1048576 }') GiB RAM, $(uname -sr)"
BENCH_PARAMS="$rounds interleaved rounds per build and connection count ($conns_list) of \`wrk -t$threads -c<connections> -d${duration}s --latency -s bench/post_work.lua\` (one thread for one connection) after a ${warmup} s warm-up; $exit_runs exit-latency runs per build"
if BENCH_COMMIT=$(git rev-parse --short HEAD 2>/dev/null); then
    [ -z "$(git status --porcelain 2>/dev/null)" ] || BENCH_COMMIT+=" + uncommitted changes"
else
    BENCH_COMMIT="none yet"
fi
export BENCH_OVERRIDES
BENCH_OVERRIDES=$(env | grep -E '^BENCH_(ROUNDS|SECONDS|WARMUP|EXIT_RUNS|THREADS|CONNECTIONS|BUILDS|HELLO_ROUNDS|HELLO_SECONDS|PERSISTENT_ROUNDS)=' | sort | tr '\n' ' ' || true)
export BENCH_HELLO_PARAMS
BENCH_HELLO_PARAMS="$hello_rounds interleaved rounds per build (engine, httpserver, engine, ...), each on a fresh server, of \`wrk -t$((threads < hello_conns ? threads : hello_conns)) -c$hello_conns -d${hello_duration}s --latency 'http://127.0.0.1:<port>/?delay_ms=0'\` after a ${warmup} s warm-up"

# shellcheck disable=SC2086 # ($builds is a list of words)
BENCH_CONNS="$conns_list" _HELLO_MODE="$hello" _HELLO_ROUNDS="$hello_rounds" _PERSISTENT_MODE="$persistent" \
    python3 - "$out" "$rounds" "$write_docs" $builds <<'PY'
import json, os, re, statistics, sys

out, rounds, write_docs, builds = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4:]
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}

def num(pattern, text, default=None):
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else default

def parse_wrk(text):
    rps = num(r"^Requests/sec:\s+([\d.]+)", text)
    m = re.search(r"^\s*99(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
    p99 = float(m.group(1)) * UNIT_MS[m.group(2)] if m else None
    m = re.search(r"^\s*50(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
    p50 = float(m.group(1)) * UNIT_MS[m.group(2)] if m else None
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = sum(map(int, sock.groups())) if sock else 0
    errors += int(num(r"Non-2xx or 3xx responses:\s+(\d+)", text, 0))
    requests = int(num(r"^\s*(\d+) requests in", text, 0))
    if rps is None or p99 is None:
        raise SystemExit(f"cannot parse wrk output:\n{text}")
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors, "requests": requests}

def hello_report():
    """The hello section's text: summary table, per-round table, notes."""
    n = int(os.environ["_HELLO_ROUNDS"])
    names = {"engine": "engine", "httpserver": "HttpServer"}
    runs = {}
    for x in names:
        runs[x] = []
        for r in range(1, n + 1):
            with open(f"{out}/hello.{x}.{r}.wrk.txt") as fh:
                w = parse_wrk(fh.read())
            with open(f"{out}/hello.{x}.{r}.rc") as fh:
                w["rc"] = fh.read().strip()
            runs[x].append(w)
    e, h = runs["engine"], runs["httpserver"]

    def med(rs, k):
        return statistics.median(w[k] for w in rs)

    def span(rs, k, fmt):
        vals = [w[k] for w in rs]
        return f"{format(min(vals), fmt)}–{format(max(vals), fmt)}"

    def rat(a, b):
        return a / b if b else float("inf")

    def verdict(ok):
        return "PASS" if ok else "**MISS**"

    def rounds_verdict(oks):
        met = sum(oks)
        if met == len(oks):
            return f"PASS in {met}/{len(oks)} rounds"
        if met == 0:
            return f"**MISS** in {len(oks)}/{len(oks)} rounds"
        return f"PASS in {met}/{len(oks)}, **MISS** in {len(oks) - met}/{len(oks)} rounds"

    # A round's ratio pairs the engine's round i with the HttpServer round right after it.
    checks = {
        "rps": ("≥ 0.9× HttpServer", lambda ev, hv: ev >= 0.9 * hv),
        "p99_ms": ("≤ 1.1× HttpServer", lambda ev, hv: ev <= 1.1 * hv),
    }
    rows = [("rps", "requests/s", ",.0f"), ("p99_ms", "p99, ms", ".2f"), ("p50_ms", "p50, ms", ".2f")]
    lines = ["| metric | engine | HttpServer | engine/HttpServer | target | |",
             "|---|---:|---:|---:|---|---|"]
    for k, label, fmt in rows:
        em, hm = med(e, k), med(h, k)
        per = [rat(a[k], b[k]) for a, b in zip(e, h)]
        target, check = checks.get(k, ("", None))
        lines.append(f"| {label}, median | {format(em, fmt)} | {format(hm, fmt)} | {rat(em, hm):.2f} | "
                     f"{target} | {verdict(check(em, hm)) if check else ''} |")
        lines.append(f"| {label}, min–max over {n} round{'s' if n > 1 else ''} | {span(e, k, fmt)} | {span(h, k, fmt)} | "
                     f"{min(per):.2f}–{max(per):.2f} per round | {target + ' in each round' if check else ''} | "
                     f"{rounds_verdict([check(a[k], b[k]) for a, b in zip(e, h)]) if check else ''} |")
    lines.append(f"| errors (socket + non-2xx), all rounds | {sum(w['errors'] for w in e)} | "
                 f"{sum(w['errors'] for w in h)} | | | |")
    lines.append(f"| exit status after SIGTERM, per round | {', '.join(w['rc'] for w in e)} | "
                 f"{', '.join(w['rc'] for w in h)} | | engine: 0 | {verdict(all(w['rc'] == '0' for w in e))} |")
    detail = ["| build | round | req/s | p50 ms | p99 ms | requests | errors | exit status after SIGTERM |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in range(n):
        for x, rs in (("engine", e), ("httpserver", h)):
            w = rs[r]
            p50 = "n/a" if w["p50_ms"] is None else f"{w['p50_ms']:.2f}"
            detail.append(f"| {x} | {r + 1} | {w['rps']:,.0f} | {p50} | {w['p99_ms']:.2f} | "
                          f"{w['requests']:,} | {w['errors']} | {w['rc']} |")
    notes = []
    for x, rs in (("engine", e), ("httpserver", h)):
        bad = sum(w["rc"] != "0" for w in rs)
        if bad:
            notes.append(f"- **hello {x}: {bad} of {n} rounds ended with a non-zero exit status after SIGTERM**")
        errs = sum(w["errors"] for w in rs)
        if errs:
            notes.append(f"- **hello {x}: {errs} wrk errors (socket + non-2xx) over the rounds**")
    text = "\n".join([
        "Hello example: `actors/examples/hello.rs` on the engine (`WORKERS=2`) against the same",
        "handler on actix-web's own `HttpServer` (`bench/bare/src/bin/hello.rs`, `.workers(2)`):",
        f"{os.environ['BENCH_HELLO_PARAMS']}.",
        "Medians, with the min–max over the rounds; a round's ratio pairs an engine round with",
        "the HttpServer round right after it.",
        "",
        *lines,
        "",
        "Per hello round:",
        "",
        *detail,
        *([""] + notes if notes else []),
    ])
    return text

DOC_PATH = "docs/benchmarks.md"
RESULTS_START, RESULTS_END = "<!-- results:start -->", "<!-- results:end -->"
PERSISTENT_START, PERSISTENT_END = "<!-- persistent:start -->", "<!-- persistent:end -->"

def persistent_block():
    """The persistent section's text (bench/persistent.sh's output) between its own markers."""
    with open(f"{out}/persistent.md") as fh:
        return f"{PERSISTENT_START}\n{fh.read().strip()}\n{PERSISTENT_END}\n"

if os.environ["_PERSISTENT_MODE"] == "only":
    overrides = os.environ.get("BENCH_OVERRIDES", "").strip()
    overrides = f", overridden by `{overrides}` (not comparable with the targets)" if overrides else ""
    header = (f"Recorded on {os.environ['BENCH_DATE']} (commit: {os.environ['BENCH_COMMIT']}) with "
              f"`BENCH_PERSISTENT=only bash bench/run.sh`{overrides}; machine: {os.environ['BENCH_MACHINE']}.")
    with open(f"{out}/persistent.md") as fh:
        text = fh.read().strip()
    print(f"\n{header}\n\n{text}")
    if write_docs:
        # Only the persistent part of the results section: the rest of it stays as recorded.
        block = f"{PERSISTENT_START}\n{header}\n\n{text}\n{PERSISTENT_END}"
        try:
            with open(DOC_PATH) as fh:
                doc = fh.read()
        except FileNotFoundError:
            doc = "# Benchmarks\n"
        rs = doc.find(RESULTS_START)
        re_ = doc.find(RESULTS_END, rs) if rs >= 0 else -1
        ps = doc.find(PERSISTENT_START, rs) if rs >= 0 else -1
        pe = doc.find(PERSISTENT_END, ps) if ps >= 0 else -1
        if rs >= 0 and re_ >= 0 and 0 <= ps < pe < re_:
            doc = doc[:ps] + block + doc[pe + len(PERSISTENT_END):]
        elif rs >= 0 and re_ >= 0:
            doc = doc[:re_] + block + "\n" + doc[re_:]
        else:
            doc = doc.rstrip("\n") + f"\n\n{RESULTS_START}\n## Results\n\n{block}\n{RESULTS_END}\n"
        with open(DOC_PATH, "w") as fh:
            fh.write(doc)
        print(f"\nwrote the persistent part of the results section of {DOC_PATH}")
    sys.exit(0)

if os.environ["_HELLO_MODE"] == "only":
    text = hello_report()
    overrides = os.environ.get("BENCH_OVERRIDES", "").strip()
    print(f"\nRecorded on {os.environ['BENCH_DATE']} (commit: {os.environ['BENCH_COMMIT']}), "
          f"BENCH_HELLO=only{', overridden by ' + overrides if overrides else ''}.")
    print(f"Machine: {os.environ['BENCH_MACHINE']}\n")
    print(text)
    print("\nBENCH_HELLO=only: docs/benchmarks.md left alone")
    sys.exit(0)

conns = [int(c) for c in os.environ["BENCH_CONNS"].split()]
data = {}
for b in builds:
    per_c = {}
    for c in conns:
        runs = []
        for r in range(1, rounds + 1):
            with open(f"{out}/{b}.c{c}.{r}.wrk.txt") as fh:
                w = parse_wrk(fh.read())
            with open(f"{out}/{b}.c{c}.{r}.rc") as fh:
                w["rc"] = fh.read().strip()
            runs.append(w)
        per_c[c] = {
            "runs": runs,
            "rps": statistics.median(x["rps"] for x in runs),
            "p50": statistics.median(x["p50_ms"] for x in runs),
            "p99": statistics.median(x["p99_ms"] for x in runs),
            "errors": sum(x["errors"] for x in runs),
            "bad_rc": sum(x["rc"] != "0" for x in runs),
        }
    with open(f"{out}/{b}.exit.txt") as fh:
        ex = json.loads(fh.read().strip().splitlines()[-1])
    data[b] = {
        "c": per_c,
        "exit": ex["median_exit_ms"],
        "exit_failed": ex["failed"],
        "exit_runs": ex["runs"],
        "exit_min": ex["min_exit_ms"],
        "exit_max": ex["max_exit_ms"],
    }

def f(v, fmt):
    return "n/a" if v is None else format(v, fmt)

def verdict(ok):
    return "n/a" if ok is None else ("met" if ok else "**missed**")

cols = [x for x in ("drainer", "bare") if x in data]
both = len(cols) == 2
d, b = data.get("drainer"), data.get("bare")

def ratio(dv, bv):
    if dv is None or bv is None:
        return "n/a"
    return f"{dv / bv:.2f}" if bv else ("1.00" if dv == 0 else "∞")

def targets(c):
    """(metric key, target text, check(drainer, bare) or None) for c connections."""
    if c == 1:
        return {"p50": ("within 10% of bare", lambda dv, bv: dv <= 1.10 * bv)}
    if c == 32:
        return {"rps": ("≥ 2× bare", lambda dv, bv: dv >= 2 * bv),
                "p99": ("≤ bare", lambda dv, bv: dv <= bv),
                "errors": ("0", lambda dv, bv: dv == 0)}
    if c == 256:
        return {"p99": ("< 50 ms", lambda dv, bv: dv < 50),
                "errors": ("0", lambda dv, bv: dv == 0)}
    return {"rps": ("≥ bare", lambda dv, bv: dv >= bv), "errors": ("0", lambda dv, bv: dv == 0)}

metrics = [("rps", "requests/s", ",.0f"), ("p50", "p50, ms", ".2f"),
           ("p99", "p99, ms", ".2f"), ("errors", "errors (socket + non-2xx)", "d")]
lines = ["| connections | metric | " + " | ".join(cols) + " | drainer/bare | target | |",
         "|---:|---|" + "---:|" * len(cols) + "---:|---|---|"]
for c in conns:
    t = targets(c)
    for key, label, fmt in metrics:
        vals = [data[x]["c"][c][key] for x in cols]
        target, check = t.get(key, ("", None))
        ok = None
        if check is not None and d is not None and (b is not None or key in ("errors",) or c == 256):
            ok = check(d["c"][c][key], b["c"][c][key] if b else None)
        r = ratio(d["c"][c][key], b["c"][c][key]) if both else "n/a"
        lines.append(f"| {c} | {label} | " + " | ".join(f(v, fmt) for v in vals)
                     + f" | {r} | {target} | {verdict(ok) if target else ''} |")
lines.append(f"| | exit latency after the last response, ms (median) | "
             + " | ".join(f(data[x]["exit"], ".1f") for x in cols)
             + f" | {ratio(d['exit'], b['exit']) if both else 'n/a'} | drainer ≤ 10 ms | "
             + f"{verdict(d['exit'] is not None and d['exit'] <= 10) if d else 'n/a'} |")
table = "\n".join(lines)

stdin_table = ""
if os.path.exists(f"{out}/stdin.json"):
    with open(f"{out}/stdin.json") as fh:
        st = json.loads(fh.read().strip().splitlines()[-1])
    n = st["count"]
    stdin_table = "\n".join([
        "",
        f"Stdin mode (`drainer --stdin`, {n:,} requests piped in one go; median of the runs):",
        "",
        "| metric | drainer --stdin | target | |",
        "|---|---:|---|---|",
        f"| zero-latency burst, replies/s | {st['burst_replies_per_s']:,} | ≥ 200,000 | {verdict(st['burst_replies_per_s'] >= 200_000)} |",
        f"| {n:,} concurrent 10 ms requests, replies/s | {st['concurrent_10ms_replies_per_s']:,} | — | |",
        f"| peak RSS with {st['in_flight_seen']:,} in flight at once, MiB | {st['peak_rss_mib']} | < 200 | {verdict(st['peak_rss_mib'] < 200)} |",
        "",
    ])

detail = ["| build | connections | round | req/s | p50 ms | p99 ms | requests | errors | exit status after SIGTERM |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
for x in cols:
    for c in conns:
        for i, w in enumerate(data[x]["c"][c]["runs"], 1):
            detail.append(f"| {x} | {c} | {i} | {w['rps']:,.0f} | {f(w['p50_ms'], '.2f')} | {w['p99_ms']:.2f} | {w['requests']:,} | {w['errors']} | {w['rc']} |")
notes = []
for x in cols:
    v = data[x]
    notes.append(f"- {x} exit latency: {v['exit_runs'] - v['exit_failed']}/{v['exit_runs']} runs ok, "
                 f"min {f(v['exit_min'], '.1f')} ms, max {f(v['exit_max'], '.1f')} ms")
    if v["exit_failed"]:
        notes.append(f"  - **{v['exit_failed']} exit-latency runs failed** (see `{x}.exit.txt`)")
    bad = sum(v["c"][c]["bad_rc"] for c in conns)
    if bad:
        notes.append(f"  - **{bad} throughput rounds ended with a non-zero exit status**")

env = os.environ
overrides = env.get("BENCH_OVERRIDES", "").strip()
overrides = f", overridden by `{overrides}` (not comparable with the targets)" if overrides else ""
hello_text = ""
if os.environ["_HELLO_MODE"] == "1":
    hello_text = "\n" + hello_report() + "\n"
persistent_text = ""
if os.environ["_PERSISTENT_MODE"] == "1":
    persistent_text = "\n" + persistent_block()
relay_text = ""
if os.path.exists(f"{out}/relay.md"):
    with open(f"{out}/relay.md") as fh:
        relay_text = ("\n### The outbox and the relay (bench/relay.sh)\n\n"
                      f"{env.get('BENCH_RELAY_ROUNDS', '3')} rounds, then the crash run.\n\n"
                      f"{fh.read().strip()}\n")

section = f"""## Results

Recorded on {env['BENCH_DATE']} (commit: {env['BENCH_COMMIT']}) with `make bench`{overrides}.

- Machine: {env['BENCH_MACHINE']}
- Method: {env['BENCH_PARAMS']}.

{table}
{stdin_table}
Per round:

{chr(10).join(detail)}

{chr(10).join(notes)}
{hello_text}{persistent_text}{relay_text}"""
print("\n" + table + "\n" + stdin_table)
print("\n".join(notes))
if hello_text:
    print(hello_text)
if persistent_text:
    with open(f"{out}/persistent.md") as fh:
        print("\n" + fh.read().strip())
if relay_text:
    print(relay_text)

if write_docs:
    path = DOC_PATH
    start, end = RESULTS_START, RESULTS_END
    block = f"{start}\n{section}{end}"
    try:
        with open(path) as fh:
            doc = fh.read()
    except FileNotFoundError:
        doc = "# Benchmarks\n"
    if start in doc and end in doc and doc.index(start) < doc.index(end):
        doc = doc[: doc.index(start)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as fh:
        fh.write(doc)
    print(f"\nwrote the results section of {path}")
PY
