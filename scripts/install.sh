#!/usr/bin/env bash
# Install everything aiida-hpcai needs on a fresh Debian machine with Python 3.11 (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v pw.x >/dev/null 2>&1 || ! command -v dot >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq quantum-espresso graphviz >/dev/null
fi

PYTHON=${PYTHON:-python3}
# torch first: 2.13.0 is a CPU wheel on this disk; an unpinned torch would pull a multi-GB CUDA build.
$PYTHON -m pip install -q torch==2.13.0
$PYTHON -m pip install -q -e ".[dev,docs,mcp]"
