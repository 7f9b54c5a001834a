#!/usr/bin/env python3
"""Exit latency of an HTTP server that is stopped while a request is in flight.

Usage: bench/exit_latency.py [--runs N] [--port P] [--log FILE] -- SERVER_CMD [ARGS...]

For each run: start SERVER_CMD with PORT set (stdout/stderr appended to the log
file), wait until the port accepts connections, open a fresh TCP connection and
send `POST /work {"name":"exit","latency_ms":200}` with `Connection: close`,
send SIGTERM to the server ~50 ms later, read the whole response, then wait for
the process to exit.

    exit latency = time the process exited - time the response's last byte arrived

Both instants come from one select() loop over the socket and a pidfd for the
server process (Linux >= 5.3; elsewhere a thread blocked in waitpid() stands
in for the pidfd), so neither is quantised by polling. A run is "ok" when the
response is 201, the server exits with code 0, and the request was still in
flight when SIGTERM was sent. Per-run lines go to stdout; the last line is one
JSON object with all figures and the median exit latency of the ok runs.
Python 3 standard library only; every wait is bounded, so it never hangs.
"""

import argparse
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BODY = b'{"name":"exit","latency_ms":%d}'


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ExitWatcher:
    """A file descriptor that becomes readable when the process exits."""

    def __init__(self, proc):
        self.proc = proc
        self.exit_time = None  # monotonic seconds
        self._thread_time = None
        self._pipe = None
        try:
            self.fd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            r, w = os.pipe()
            self.fd, self._pipe = r, w
            threading.Thread(target=self._waiter, daemon=True).start()

    def _waiter(self):
        self.proc.wait()
        self._thread_time = time.monotonic()
        os.write(self._pipe, b"x")

    def fileno(self):
        return self.fd

    def mark(self, now):
        """Called when fd is readable; returns the exit code."""
        if self.exit_time is None:
            self.exit_time = self._thread_time or now
        return self.proc.wait(timeout=5)  # reaps the zombie; immediate

    def wait(self, timeout):
        """Sleep up to timeout seconds; True (and exit recorded) if the process exited."""
        if self.exit_time is not None:
            return True
        if select.select([self], [], [], max(timeout, 0))[0]:
            self.mark(time.monotonic())
            return True
        return False

    def close(self):
        for fd in (self.fd, self._pipe):
            if fd is not None:
                os.close(fd)


class Response:
    """Incremental HTTP/1.1 response parser: just enough to know where it ends."""

    def __init__(self):
        self.buf = b""
        self.status = None
        self.headers = {}
        self.head_len = None
        self.complete = False

    def feed(self, data):
        self.buf += data
        if self.head_len is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head_len = end + 4
            lines = self.buf[:end].decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
            for line in lines[1:]:
                k, _, v = line.partition(":")
                self.headers[k.strip().lower()] = v.strip()
        body = self.buf[self.head_len:]
        if "content-length" in self.headers:
            self.complete = len(body) >= int(self.headers["content-length"])
        elif "chunked" in self.headers.get("transfer-encoding", "").lower():
            self.complete = body.endswith(b"0\r\n\r\n")

    @property
    def body(self):
        return self.buf[self.head_len:] if self.head_len is not None else b""


def ms(a, b):
    return None if a is None or b is None else round((a - b) * 1000, 3)


def run_once(args, log):
    port = args.port or free_port()
    r = {"port": port, "ok": False, "error": None, "status": None, "exit_code": None,
         "exit_ms": None, "response_after_sigterm_ms": None, "eof_after_response_ms": None,
         "startup_ms": None}
    log.write(f"\n=== exit_latency run: PORT={port} {' '.join(args.cmd)}\n")
    log.flush()
    t_start = time.monotonic()
    try:
        proc = subprocess.Popen(args.cmd, env=dict(os.environ, PORT=str(port)), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as e:
        r["error"] = f"cannot start server: {e}"
        return r
    watcher = ExitWatcher(proc)
    sock = None
    try:
        # 1. wait (bounded) until the port accepts connections
        deadline = t_start + args.start_timeout
        while True:
            if watcher.wait(0):
                r["exit_code"] = proc.returncode
                r["error"] = f"server exited during startup (code {proc.returncode})"
                return r
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                pass
            if time.monotonic() > deadline:
                r["error"] = f"port {port} not accepting connections after {args.start_timeout}s"
                return r
            watcher.wait(0.02)
        r["startup_ms"] = ms(time.monotonic(), t_start)
        if watcher.wait(args.settle_ms / 1000):  # let the readiness probe's connection go away
            r["error"] = f"server exited right after startup (code {proc.returncode})"
            return r

        # 2. one request on a fresh connection; SIGTERM while it is in flight
        body = BODY % args.latency_ms
        req = (f"POST /work HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(req)
        t_send = time.monotonic()
        sock.setblocking(False)
        resp = Response()
        t_term = t_last = t_eof = None
        term_due = t_send + args.signal_after_ms / 1000
        resp_deadline = t_send + args.response_timeout
        while t_eof is None or watcher.exit_time is None:
            now = time.monotonic()
            if t_term is None and now >= term_due:
                os.kill(proc.pid, signal.SIGTERM)
                t_term = time.monotonic()
                continue
            if t_eof is None and now > resp_deadline:
                r["error"] = f"no complete response/close within {args.response_timeout}s"
                break
            if t_term is not None and watcher.exit_time is None and now > t_term + args.exit_timeout:
                r["error"] = f"server still running {args.exit_timeout}s after SIGTERM"
                break
            wake = [resp_deadline if t_eof is None else float("inf")]
            wake.append(term_due if t_term is None else t_term + args.exit_timeout)
            rlist = ([sock] if t_eof is None else []) + ([watcher] if watcher.exit_time is None else [])
            ready = select.select(rlist, [], [], max(0.0, min(wake) - now))[0]
            now = time.monotonic()  # one timestamp for everything this wake-up saw
            if sock in ready:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                    r["error"] = "connection reset"
                if data:
                    resp.feed(data)
                    if resp.complete and t_last is None:
                        t_last = now
                else:
                    t_eof = now  # a truncated response leaves t_last unset
            if watcher in ready:
                r["exit_code"] = watcher.mark(now)

        r["status"] = resp.status
        r["exit_ms"] = ms(watcher.exit_time, t_last)
        r["response_after_sigterm_ms"] = ms(t_last, t_term)
        r["eof_after_response_ms"] = ms(t_eof, t_last)
        if t_term is None:
            r["error"] = r["error"] or "response arrived before SIGTERM was sent"
        if r["error"] is None:
            if resp.status != 201:
                r["error"] = f"HTTP status {resp.status}: {resp.body[:200]!r}"
            elif t_last is None:
                r["error"] = "incomplete response"
            elif t_last < t_term:
                r["error"] = "request was not in flight at SIGTERM (response came first)"
            elif r["exit_code"] != 0:
                r["error"] = f"exit code {r['exit_code']}"
        r["ok"] = r["error"] is None
        return r
    finally:
        if sock is not None:
            sock.close()
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        watcher.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                usage="%(prog)s [options] -- SERVER_CMD [ARGS...]")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--port", type=int, default=0, help="port to use (default: a free port per run)")
    p.add_argument("--log", help="server stdout/stderr (default: a file in $TMPDIR)")
    p.add_argument("--latency-ms", type=int, default=200, help="latency_ms of the in-flight request")
    p.add_argument("--signal-after-ms", type=float, default=50, help="SIGTERM this long after sending")
    p.add_argument("--settle-ms", type=float, default=100, help="pause between readiness and request")
    p.add_argument("--start-timeout", type=float, default=30)
    p.add_argument("--response-timeout", type=float, default=40)
    p.add_argument("--exit-timeout", type=float, default=40, help="max wait for exit after SIGTERM")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args()
    if args.cmd and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    if not args.cmd:
        p.error("missing SERVER_CMD")
    if args.runs < 1:
        p.error("--runs must be >= 1")
    log_path = args.log or os.path.join(tempfile.gettempdir(), f"exit_latency-{os.getpid()}.log")
    print(f"# {' '.join(args.cmd)}: {args.runs} runs, server log {log_path}", flush=True)

    results = []
    with open(log_path, "a") as log:
        for i in range(1, args.runs + 1):
            r = run_once(args, log)
            results.append(r)
            print(f"run {i:2}/{args.runs}: {'ok  ' if r['ok'] else 'FAIL'} status={r['status']} "
                  f"exit_code={r['exit_code']} exit_ms={r['exit_ms']} "
                  f"response_after_sigterm_ms={r['response_after_sigterm_ms']}"
                  + (f" error={r['error']}" if r["error"] else ""), flush=True)

    exit_ms = [r["exit_ms"] for r in results if r["ok"]]
    summary = {
        "command": args.cmd,
        "runs": len(results),
        "ok": len(exit_ms),
        "failed": len(results) - len(exit_ms),
        "median_exit_ms": round(statistics.median(exit_ms), 3) if exit_ms else None,
        "min_exit_ms": min(exit_ms) if exit_ms else None,
        "max_exit_ms": max(exit_ms) if exit_ms else None,
        "exit_ms": exit_ms,
        "results": results,
    }
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
