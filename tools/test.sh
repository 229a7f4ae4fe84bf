#!/usr/bin/env bash
# The whole test suite, as CI runs it after the set-up (bash tools/setup.sh && bash tools/test.sh): nbdev's gate, every
# notebook's tests, the checks in tools/ and bench/, and the package installed as a user installs it.
# Ends with one line "tests: N passed, N failed" (notebooks and checks), so a run that tested nothing shows.
# While editing, the inner loop is nbdev alone: nbdev_export, then nbdev_test --path nbs/15_mixup.ipynb (see README).
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/nbdev_test ] || { echo "no development environment: run bash tools/setup.sh first"; echo "tests: 0 passed, 1 failed"; exit 1; }
source .venv/bin/activate
export MPLBACKEND=Agg PYTHONWARNINGS=ignore
# two notebooks run at once on two cores: one torch thread each avoids oversubscription (measured on a busy 2-core
# machine: one 1-d CNN run took 3.5 s of CPU with 1 thread, 39 s with 2)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
passed=0; failed=0; t_all=$SECONDS
ok() { passed=$((passed+1)); echo "PASS: $1"; }
ko() { failed=$((failed+1)); echo "FAIL: $1"; }
check() { local name=$1 t=$SECONDS; shift; echo "== $name"; if "$@"; then ok "$name ($((SECONDS-t))s)"; else ko "$name ($((SECONDS-t))s)"; fi; }

# nbdev's CI gate: cleaning the notebooks and exporting the library must change nothing that git tracks
gate() {
  nbdev_clean && nbdev_export || return 1
  local changed; changed=$(git status --porcelain --untracked-files=all -- nbs "$(python -c 'from nbdev.config import get_config; print(get_config().lib_path.name)')")
  [ -z "$changed" ] && return 0
  echo "$changed"; git --no-pager diff --stat -- nbs
  echo "the notebooks are not clean or the library is not exported from them (or the work is not committed yet): run nbdev_clean and nbdev_export, then commit"
  return 1
}
check "gate: nbdev_clean and nbdev_export leave git status clean" gate
check "golden outputs: every mixing function's output on a fixed grid, as recorded (tools/test_golden.py)" python tools/test_golden.py
check "API: every public name, parameter and default as recorded (tools/test_api.py)" python tools/test_api.py

echo "== nbdev_test (every notebook)"
nbs=$(find nbs -name '*.ipynb' -not -name '_*' -not -path '*/.ipynb_checkpoints/*' | wc -l)
log=$(mktemp); t=$SECONDS
if nbdev_test --n_workers 2 --timing 2>&1 | tee "$log"; then nb_failed=0; else
  nb_failed=$(sed -n '/Failed On The Following Notebooks/,$p' "$log" | grep -c '\.ipynb' || true)
  [ "$nb_failed" -gt 0 ] || nb_failed=1
fi
echo "notebooks: $((nbs - nb_failed)) passed, $nb_failed failed ($((SECONDS-t))s)"
passed=$((passed + nbs - nb_failed)); failed=$((failed + nb_failed))

check "README.md is what nbs/index.ipynb makes (tools/make_readme.py --check)" python tools/make_readme.py --check
check "docs: the site builds into _docs/ with no warning (tools/build_docs.sh)" bash tools/build_docs.sh
check "docs: every page in headless Chromium, screenshots in _artifacts/docs (tools/browser_test.py)" python tools/browser_test.py
check "bench: every candidate of the speed benchmark runs, on tiny batches (bench/bench_mix.py --smoke)" python bench/bench_mix.py --smoke
check "bench: the GPU checks' code runs on the CPU, on tiny batches (bench/bench_gpu.py --smoke)" python bench/bench_gpu.py --smoke
check "bench: the Manifold Mixup benchmark runs, on tiny sizes (bench/bench_manifold.py --smoke)" python bench/bench_manifold.py --smoke
check "bench: the guided methods' benchmark runs, on tiny sizes (bench/bench_guided.py --smoke)" python bench/bench_guided.py --smoke
check "bench: the detection benchmark runs, on tiny sizes (bench/bench_detection.py --smoke)" python bench/bench_detection.py --smoke
check "bench: the bank benchmark runs, on tiny sizes, and a bank's memory is its size in samples (bench/bench_bank.py --smoke)" python bench/bench_bank.py --smoke
check "bench: the benchmark of partners across ranks runs, on 2 CPU ranks and tiny sizes (bench/bench_bank_ranks.py --smoke)" python bench/bench_bank_ranks.py --smoke
check "distributed: 2 CPU ranks under torchrun, mixing, failures (tools/test_ddp.py)" python tools/test_ddp.py
# the package as users install it (tools/test_user_env.py): the wheel, then fresh venvs with no nbdev
check "user env: sdist and wheel build, twine check passes" python tools/test_user_env.py build
# the two fresh environments run side by side: each waits minutes on pip while the other's notebooks use the cores
envs=$(mktemp -d); t=$SECONDS
python tools/test_user_env.py newest > "$envs/newest" 2>&1 & newest=$!
python tools/test_user_env.py oldest > "$envs/oldest" 2>&1 & oldest=$!
env_check() {
  local name=$1 pid=$2; echo "== $name"
  if wait "$pid"; then cat "$envs/$3"; ok "$name ($((SECONDS-t))s, side by side)"; else cat "$envs/$3"; ko "$name ($((SECONDS-t))s, side by side)"; fi
}
env_check "user env: newest fastai/fastcore/torch/torchvision kept by pip install of the wheel[fastai]; imports, the fastai layer's pages and a tutorial, CLI" $newest newest
env_check "user env: the lower bounds: the core with torch and numpy alone, then the fastai extra; imports, the torch layer's notebooks, CLI" $oldest oldest
rm -rf "$envs"

echo "test suite: $((SECONDS-t_all))s"
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
