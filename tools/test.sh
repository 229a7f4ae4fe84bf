#!/usr/bin/env bash
# The whole test suite, as CI runs it: set-up, nbdev's gates, the notebook tests and the checks in tools/.
# Ends with one line "tests: N passed, N failed" (notebooks and checks), so a run that tested nothing shows.
set -uo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh || { echo "set-up failed"; echo "tests: 0 passed, 1 failed"; exit 1; }
source .venv/bin/activate
export MPLBACKEND=Agg PYTHONWARNINGS=ignore
# nbdev_test runs two notebooks at once on two cores: one thread each avoids oversubscription
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
passed=0; failed=0
ok() { passed=$((passed+1)); echo "PASS: $1"; }
ko() { failed=$((failed+1)); echo "FAIL: $1"; }
check() { local name=$1; shift; echo "== $name"; if "$@"; then ok "$name"; else ko "$name"; fi; }

sum() { find nbs mixup_nbdev -type f \( -name '*.ipynb' -o -name '*.py' \) -not -path '*/.ipynb_checkpoints/*' -not -path '*/__pycache__/*' | sort | xargs md5sum; }
gates() {
  local before after; before=$(sum)
  nbdev_clean && nbdev_export || return 1
  after=$(sum)
  [ "$before" == "$after" ] && return 0
  diff <(echo "$before") <(echo "$after"); echo "run nbdev_clean and nbdev_export, then commit"; return 1
}
check "gate: nbdev_clean and nbdev_export leave no diff" gates

echo "== nbdev_test (every notebook)"
nbs=$(find nbs -name '*.ipynb' -not -name '_*' -not -path '*/.ipynb_checkpoints/*' | wc -l)
log=$(mktemp)
# one torch thread per notebook: 2 notebooks at once with 2 threads each oversubscribe 2 cores, and the notebooks'
# tiny models then train ~10x slower (measured on a busy 2-core machine: one 1-d CNN run, 3.5 s CPU with 1 thread, 39 s with 2)
if OMP_NUM_THREADS=1 nbdev_test --n_workers 2 2>&1 | tee "$log"; then nb_failed=0; else
  nb_failed=$(sed -n '/Failed On The Following Notebooks/,$p' "$log" | grep -c '\.ipynb' || true)
  [ "$nb_failed" -gt 0 ] || nb_failed=1
fi
echo "notebooks: $((nbs - nb_failed)) passed, $nb_failed failed"
passed=$((passed + nbs - nb_failed)); failed=$((failed + nb_failed))

# further checks (docs site, browser, distributed) are added below this line
check "README.md is what nbs/index.ipynb makes (tools/make_readme.py --check)" python tools/make_readme.py --check
check "docs: the site builds into _docs/ with no warning (tools/build_docs.sh)" bash tools/build_docs.sh
check "docs: every page in headless Chromium, screenshots in _artifacts/docs (tools/browser_test.py)" python tools/browser_test.py
check "bench: every candidate of the speed benchmark runs, on tiny batches (bench/bench_mix.py --smoke)" python bench/bench_mix.py --smoke
check "bench: the GPU checks' code runs on the CPU, on tiny batches (bench/bench_gpu.py --smoke)" python bench/bench_gpu.py --smoke
check "distributed: 2 CPU ranks under torchrun, mixing, failures (tools/test_ddp.py)" python tools/test_ddp.py

echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
