#!/usr/bin/env bash
# Set up everything cifarflow needs on a fresh machine (Debian/Ubuntu, as root or with sudo):
# system packages, then a virtual environment in .venv with the project installed in it.
# Safe to run again: it does nothing when .venv is already up to date with setup.cfg.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
STAMP=.venv/.cifarflow-setup
want=$(cat setup.cfg setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0
fi

echo "setup: creating .venv and installing cifarflow (first run takes a few minutes)" >&2
# FFCV builds from source against these system libraries
SYS_PKGS="pkg-config libturbojpeg0-dev libopencv-dev"
if ! dpkg -s $SYS_PKGS >/dev/null 2>&1; then
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $SYS_PKGS >/dev/null
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned: this machine's pip takes these two builds from local disk
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet -e ".[dev,dali,ffcv,peers]"
echo "$want" > "$STAMP"
echo "setup: done (.venv)" >&2
