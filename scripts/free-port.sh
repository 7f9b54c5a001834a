#!/usr/bin/env bash
# Print a TCP port on 127.0.0.1 that is free right now (the kernel picks it).
# Used by `make run` for the admin listener, so instances on one host never
# collide by default. Prints 0 (let drainer pick and log it) without python3.
set -euo pipefail
if command -v python3 >/dev/null; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
else
    echo 0
fi
