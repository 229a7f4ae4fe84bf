#!/usr/bin/env bash
# Install everything the project needs, from its own files, into .venv (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
log=.venv/install.log
pip() { .venv/bin/python -m pip "$@" >>"$log" 2>&1 || { cat "$log"; echo "pip $* failed (log above)"; exit 1; }; }
: >"$log"
pip install -q --upgrade pip
# the tested toolchain: exact versions in tools/constraints.txt
pip install -q -c tools/constraints.txt -e ".[dev]"
echo "set-up done: .venv"
