#!/usr/bin/env bash
# Set up the development environment in .venv (idempotent): the tested toolchain at the exact versions of
# tools/constraints.txt, the package in editable mode with its `dev` extra, the docs renderer (tools/docs_renderer/) on
# the venv's path, and headless Chromium for the docs browser test. It reinstalls only when settings.ini, setup.py,
# pyproject.toml, tools/constraints.txt or this script changed since the last set-up, so running it before every test
# run costs a second. Testing is separate: bash tools/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
log=.venv/install.log stamp=.venv/setup.stamp
want=$(cat settings.ini setup.py pyproject.toml tools/constraints.txt tools/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && .venv/bin/python -c 'import mixup_nbdev, nbdev, mixup_nbdev_docs' 2>/dev/null; then
  echo "set-up: .venv is up to date"
else
  rm -f "$stamp"
  pip() { .venv/bin/python -m pip "$@" >>"$log" 2>&1 || { cat "$log"; echo "pip $* failed (log above)"; exit 1; }; }
  : >"$log"
  pip install -q --upgrade pip
  # the tested toolchain: exact versions in tools/constraints.txt
  pip install -q -c tools/constraints.txt -e ".[dev]"
  # the show_doc renderer that settings.ini names (mixup_nbdev_docs.TableRenderer) needs nbdev, so it is not in the
  # package: a .pth file puts its folder on this venv's path, as an editable install would
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$PWD/tools/docs_renderer" >"$site/mixup_nbdev_docs.pth"
  .venv/bin/python -c 'import mixup_nbdev, nbdev, mixup_nbdev_docs' || { echo "set-up: the development environment does not import (see $log)"; exit 1; }
  echo "$want" >"$stamp"
fi
# headless Chromium for the docs browser test (tools/browser_test.py); only where no Chromium or Chrome is installed
# (GitHub's runners have google-chrome) and apt can add Debian's package
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && ! command -v google-chrome >/dev/null \
   && command -v apt-get >/dev/null; then
  sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  { $sudo apt-get update && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends chromium fonts-dejavu-core; } >>"$log" 2>&1 \
    || echo "warning: could not install chromium (see $log); the browser test will fail"
fi
echo "set-up done: .venv (activate it with: source .venv/bin/activate)"
