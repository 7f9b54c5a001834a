#!/usr/bin/env bash
# The rolling-restart proof (`make rolling-restart`): three instances behind a
# real load balancer, every one restarted in turn under load, every request's
# outcome counted, every acknowledged job looked up in the database. See
# docs/deploying.md.
#
#   bash bench/rolling-restart.sh     (starts its own PostgreSQL)
#
# For each balancer (ROLLING_BALANCERS, default "haproxy haproxy-retry nginx":
# HAProxy stock, HAProxy with the retries drainer makes safe, nginx) and each build
# (ROLLING_BUILDS, default "drainer bare": drainer with SHUTDOWN_DELAY_MS=700,
# and bench/bare's stock actix-web HttpServer), one run:
#   1. three instances on free loopback ports and the balancer in front, its
#      configuration rendered from deploy/haproxy.cfg or deploy/nginx.conf
#      with those ports;
#   2. `persistent-load work`: 64 keep-alive connections (ROLLING_CONNECTIONS)
#      of POST /work through the balancer for the whole run;
#   3. ROLLING_ROUNDS rounds (default 3) of: for each instance, SIGTERM, wait
#      for its exit (drain time and exit code recorded), start a new one on
#      its port, wait until its /readyz answers 200, then ROLLING_SETTLE_MS
#      (default 1000: HAProxy's rise 2 x inter 300 ms puts it back in 600 ms);
#   4. the load stops; the report counts requests, 2xx, each kind of failure
#      and the acknowledged jobs missing from the database.
# Prints markdown tables (ROLLING_OUT=<dir> keeps the raw outputs and logs).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
prog=bench/rolling-restart.sh
# shellcheck source=bench/common.sh
. bench/common.sh

balancers=${ROLLING_BALANCERS:-haproxy haproxy-retry nginx}
builds=${ROLLING_BUILDS:-drainer bare}
rounds=${ROLLING_ROUNDS:-3}
connections=${ROLLING_CONNECTIONS:-64}
settle_ms=${ROLLING_SETTLE_MS:-1000}
delay_ms=700
posint ROLLING_ROUNDS "$rounds"
posint ROLLING_CONNECTIONS "$connections"
posint ROLLING_SETTLE_MS "$settle_ms"
for b in $balancers; do
    case $b in haproxy | haproxy-retry | nginx) ;; *) die "unknown balancer '$b' (haproxy, haproxy-retry, nginx)" ;; esac
done
for b in $builds; do
    case $b in drainer | bare) ;; *) die "unknown build '$b' (drainer, bare)" ;; esac
done

case " $balancers " in *" haproxy"*) need_package haproxy haproxy ;; esac
case " $balancers " in *" nginx "*) need_package nginx nginx-light ;; esac
command -v psql >/dev/null || die "psql is required (Debian/Ubuntu: apt-get install postgresql-client)"
if [ -z "${DATABASE_URL:-}" ]; then
    under_postgres "$root/bench/rolling-restart.sh" "$@"
fi
[ -n "${_BENCH_PREPARED:-}" ] || cargo build --release -p drainer -p bare -p persistent-load
bin=${CARGO_TARGET_DIR:-$root/target}/release
out=${ROLLING_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/drainer-rolling.XXXXXX")}
mkdir -p "$out"
say "raw outputs and logs: $out"

declare -a pids=() ports=()
lb_pid=
load_pid=
cleanup() { kill_quietly "$load_pid" "$lb_pid" "${pids[@]}"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now_ms() { echo $(($(date +%s%N) / 1000000)); }

start_instance() { # BUILD INDEX: starts instance INDEX on its port, waits until it is ready
    local build=$1 i=$2
    if [ "$build" = drainer ]; then
        env PORT="${ports[$i]}" BIND_ADDRESS=127.0.0.1 SHUTDOWN_DELAY_MS=$delay_ms RUST_LOG=warn \
            "$bin/drainer" >>"$run_dir/instance-$i.log" 2>&1 &
    else
        env PORT="${ports[$i]}" "$bin/bare" >>"$run_dir/instance-$i.log" 2>&1 &
    fi
    pids[i]=$!
    wait_ready "${ports[$i]}" "${pids[$i]}" "instance $i ($build)" "$run_dir/instance-$i.log" 20
}

render() { # BALANCER FRONT-PORT: writes the balancer's configuration into $run_dir
    local file=deploy/haproxy.cfg
    [ "$1" = nginx ] && file=deploy/nginx.conf
    sed -e "s/127\.0\.0\.1:3001/127.0.0.1:${ports[0]}/; s/127\.0\.0\.1:3002/127.0.0.1:${ports[1]}/" \
        -e "s/127\.0\.0\.1:3003/127.0.0.1:${ports[2]}/; s/127\.0\.0\.1:8080/127.0.0.1:$2/" "$file" >"$run_dir/lb.conf"
    if [ "$1" = haproxy-retry ]; then
        # Also retry what drainer guarantees was not processed: a connection
        # closed without a response, and a 503 (server_shutting_down,
        # overloaded, drain_timeout: nothing written). See docs/deploying.md.
        sed -i 's/^    option redispatch$/    option redispatch\n    retry-on conn-failure empty-response 503/' "$run_dir/lb.conf"
    fi
    grep -q "127.0.0.1:$2" "$run_dir/lb.conf" || die "could not render $file"
}

start_balancer() { # BALANCER FRONT-PORT
    case $1 in
    haproxy | haproxy-retry)
        haproxy -f "$run_dir/lb.conf" -db >"$run_dir/lb.log" 2>&1 &
        ;;
    nginx)
        mkdir -p "$run_dir/nginx/tmp"
        local global='daemon off;'
        # As root its workers would run as nobody, who cannot use $run_dir.
        [ "$(id -u)" != 0 ] || global="$global user root;"
        nginx -p "$run_dir/nginx" -c "$run_dir/lb.conf" -e stderr -g "$global" >"$run_dir/lb.log" 2>&1 &
        ;;
    esac
    lb_pid=$!
    wait_ready "$2" "$lb_pid" "$1" "$run_dir/lb.log" 10
    # Every server up: HAProxy's rise 2 x inter 300 ms from its first check.
    sleep 1
}

run_one() { # BALANCER BUILD: one run; writes $run_dir/{load.json,restarts.tsv,missing}
    local balancer=$1 build=$2 i r t0 rc front
    run_dir=$out/$balancer-$build
    mkdir -p "$run_dir"
    : >"$run_dir/restarts.tsv"
    truncate_jobs
    for i in 0 1 2; do
        ports[i]=$(free_port)
        start_instance "$build" "$i"
    done
    front=$(free_port)
    render "$balancer" "$front"
    start_balancer "$balancer" "$front"
    "$bin/persistent-load" work --addr "127.0.0.1:$front" --connections "$connections" \
        --ids-file "$run_dir/ids" --timeline-file "$run_dir/timeline.tsv" \
        >"$run_dir/load.json" 2>"$run_dir/load.log" &
    load_pid=$!
    sleep 2
    for ((r = 1; r <= rounds; r++)); do
        for i in 0 1 2; do
            say "$balancer / $build: round $r/$rounds, restarting instance $((i + 1))"
            t0=$(now_ms)
            kill -TERM "${pids[$i]}"
            reap "${pids[$i]}" 70 "instance $i (after SIGTERM)"
            rc=$reaped_rc
            printf '%s\t%s\t%s\t%s\n' "$r" "$((i + 1))" "$(($(now_ms) - t0))" "$rc" >>"$run_dir/restarts.tsv"
            start_instance "$build" "$i"
            sleep "$(awk -v ms="$settle_ms" 'BEGIN { printf "%.3f", ms / 1000 }')"
        done
    done
    sleep 2
    kill -INT "$load_pid"
    wait "$load_pid" || die "the load client failed (see $run_dir/load.log)"
    load_pid=
    kill -TERM "$lb_pid" 2>/dev/null || true
    wait "$lb_pid" 2>/dev/null || true
    lb_pid=
    for i in 0 1 2; do
        kill -TERM "${pids[$i]}" 2>/dev/null || true
        reap "${pids[$i]}" 70 "instance $i (at the end)"
    done
    pids=()
    missing_jobs "$run_dir/ids" >"$run_dir/missing"
}

for balancer in $balancers; do
    for build in $builds; do
        run_one "$balancer" "$build"
    done
done

python3 - "$out" "$balancers" "$builds" "$rounds" "$connections" <<'PY'
import json, os, sys
out, balancers, builds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
rounds, connections = sys.argv[4], sys.argv[5]
names = {"drainer": "drainer (SHUTDOWN_DELAY_MS=700)", "bare": "bare actix-web (HttpServer's own graceful stop)"}
lbs = {"haproxy": "HAProxy, stock", "haproxy-retry": "HAProxy + retry-on conn-failure empty-response 503",
       "nginx": "nginx, upstream keep-alive"}
kinds = ["refused", "reset", "eof", "timeout"]
print(f"{rounds} rounds of restarting each of 3 instances under {connections} keep-alive connections of POST /work.\n")
print("| balancer | build | requests | 2xx | non-2xx | refused | reset | closed, no answer | timeout | other | missing jobs | target |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
details = []
for lb in balancers:
    for build in builds:
        d = f"{out}/{lb}-{build}"
        load = json.load(open(f"{d}/load.json"))
        oc = load["outcomes"]
        non2xx = sum(v for k, v in oc.items() if k.startswith("status_") and not k.startswith("status_2"))
        by = {k: oc.get(k, 0) for k in kinds}
        other = load["failed"] - non2xx - sum(by.values())
        missing = int(open(f"{d}/missing").read().strip() or 0)
        ok = load["failed"] == 0 and missing == 0 and load["requests"] >= 50000
        verdict = ("met" if ok else "**missed**") if build == "drainer" else ""
        print(f"| {lbs[lb]} | {names[build]} | {load['requests']:,} | {load['ok']:,} | {non2xx} | {by['refused']} | "
              f"{by['reset']} | {by['eof']} | {by['timeout']} | {other} | {missing} | {verdict} |")
        restarts = [line.split("\t") for line in open(f"{d}/restarts.tsv").read().splitlines()]
        drains = ", ".join(f"{ms} ms ({rc})" for _, _, ms, rc in (r[:4] for r in restarts))
        failures = {k: v for k, v in oc.items() if not k.startswith("status_2")}
        details.append(f"- {lbs[lb]}, {build}: p50 {load['latency_ms']['p50']:.1f} ms, p99 "
                       f"{load['latency_ms']['p99']:.1f} ms, max {load['latency_ms']['max']:.0f} ms; "
                       f"failures {failures or 'none'}; SIGTERM to exit (exit code) per restart: {drains}")
print("\nTarget (drainer): 0 failed requests and 0 missing jobs over at least 50,000 requests behind each balancer.\n")
print("\n".join(details))
PY
