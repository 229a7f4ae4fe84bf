#!/usr/bin/env bash
# Build the docs site into _docs/ from the notebooks in nbs/, showing the outputs stored in them (no notebook is re-run;
# like nbdev_docs, nbdev's processing runs only exported and import cells, for the API entries of show_doc).
# nbdev's processing (as nbdev_docs), then Quarto where it is installed, else smalldocs (pure Python, offline; also with
# DOCS_OFFLINE=1): see tools/build_docs.py. Then README.md is made from nbs/index.ipynb (tools/make_readme.py).
# Preview: python -m http.server -d _docs 8000; check it in a browser: python tools/browser_test.py
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "no .venv: run bash tools/setup.sh first"; exit 1; }
source .venv/bin/activate
export MPLBACKEND=Agg PYTHONWARNINGS=ignore
python tools/build_docs.py
python tools/make_readme.py
