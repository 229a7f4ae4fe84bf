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
# headless Chromium for the docs browser test (tools/browser_test.py); only where no Chromium or Chrome is installed
# (GitHub's runners have google-chrome) and apt can add Debian's package
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && ! command -v google-chrome >/dev/null \
   && command -v apt-get >/dev/null; then
  sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  { $sudo apt-get update && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends chromium fonts-dejavu-core; } >>"$log" 2>&1 \
    || echo "warning: could not install chromium (see $log); the browser test will fail"
fi
echo "set-up done: .venv"
