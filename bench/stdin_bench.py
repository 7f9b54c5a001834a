#!/usr/bin/env python3
"""Stdin-mode figures for docs/benchmarks.md (python3 stdlib only).

    bench/stdin_bench.py [--runs 3] [--count 100000] [--json] -- target/release/drainer

1. burst: COUNT zero-latency tcp_requests piped in one go; replies per second
   from the first byte written to the last reply read.
2. concurrent: COUNT tcp_requests of 10 ms each, piped in one go; replies/s.
3. in flight: COUNT tcp_requests of 3000 ms, then a tcp_drain_status: its
   `remaining` shows how many were in flight at once; peak RSS of the process
   (getrusage via wait4) is the memory figure.

Every run checks that exactly COUNT replies of the right type came back and
that the node exited 0 after its stdin was closed. Bounded by timeouts.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

TIMEOUT_S = 120


def request_line(i, latency):
    return (
        '{"src": "c1", "dest": "n1", "body": {"type": "tcp_request", "msg_id": %d, '
        '"data": "x", "latency_ms": %d}}\n' % (i, latency)
    ).encode()


def run_once(cmd, count, latency, status_after=False):
    """Returns (seconds, replies, in_flight_seen, max_rss_kib, exit_code)."""
    blob = b"".join(request_line(i, latency) for i in range(1, count + 1))
    if status_after:
        blob += b'{"src": "c1", "dest": "n1", "body": {"type": "tcp_drain_status", "msg_id": 0}}\n'
    env = dict(os.environ, RUST_LOG="warn")
    proc = subprocess.Popen(
        cmd + ["--stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    watchdog = threading.Timer(TIMEOUT_S, proc.kill)
    watchdog.start()
    try:
        writer_error = []

        def write():
            try:
                proc.stdin.write(blob)
                proc.stdin.flush()
            except OSError as e:  # the node died: reported below
                writer_error.append(e)

        started = time.monotonic()
        writer = threading.Thread(target=write)
        writer.start()
        replies = 0
        in_flight = None
        want = count + (1 if status_after else 0)
        seen = 0
        expected_type = b'"type": "tcp_request_ok"'
        for line in proc.stdout:
            seen += 1
            if b'"tcp_drain_status_ok"' in line:
                in_flight = json.loads(line)["body"]["remaining"]
            elif expected_type in line:
                replies += 1
            else:
                raise SystemExit("unexpected reply: %r" % line[:200])
            if seen == want:
                break
        elapsed = time.monotonic() - started
        writer.join()
        if writer_error:
            raise SystemExit("writing to the node failed: %s" % writer_error[0])
        proc.stdin.close()
        _, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code
        return elapsed, replies, in_flight, usage.ru_maxrss, code
    finally:
        watchdog.cancel()
        if proc.returncode is None:
            proc.kill()
            proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("cmd", nargs="+")
    args = ap.parse_args()
    cmd = [c for c in args.cmd if c != "--"]
    n = args.count

    def rate(latency):
        rates = []
        for r in range(args.runs):
            elapsed, replies, _, rss, code = run_once(cmd, n, latency)
            if replies != n or code != 0:
                raise SystemExit("latency %d run %d: %d replies, exit %d" % (latency, r, replies, code))
            rates.append(n / elapsed)
            print("  latency %4d ms run %d: %8.0f replies/s, %.3f s, peak RSS %.1f MiB"
                  % (latency, r + 1, n / elapsed, elapsed, rss / 1024), file=sys.stderr)
        return statistics.median(rates)

    burst = rate(0)
    concurrent = rate(10)
    elapsed, replies, in_flight, rss, code = run_once(cmd, n, 3000, status_after=True)
    if replies != n or code != 0:
        raise SystemExit("in-flight run: %d replies, exit %d" % (replies, code))
    rss_mib = rss / 1024
    print("  in flight: %s at once, peak RSS %.1f MiB" % (in_flight, rss_mib), file=sys.stderr)
    result = {
        "count": n,
        "burst_replies_per_s": round(burst),
        "concurrent_10ms_replies_per_s": round(concurrent),
        "in_flight_seen": in_flight,
        "peak_rss_mib": round(rss_mib, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print("%s: %s" % (k, v))


if __name__ == "__main__":
    main()
