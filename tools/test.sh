#!/usr/bin/env bash
# The whole test suite, as CI runs it: set-up, nbdev's gates, the notebook tests and the checks in tools/.
# Ends with one line "tests: N passed, N failed" (notebooks and checks), so a run that tested nothing shows.
set -uo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh || { echo "set-up failed"; echo "tests: 0 passed, 1 failed"; exit 1; }
source .venv/bin/activate
export MPLBACKEND=Agg PYTHONWARNINGS=ignore
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
if nbdev_test --n_workers 2 2>&1 | tee "$log"; then nb_failed=0; else
  nb_failed=$(sed -n '/Failed On The Following Notebooks/,$p' "$log" | grep -c '\.ipynb' || true)
  [ "$nb_failed" -gt 0 ] || nb_failed=1
fi
echo "notebooks: $((nbs - nb_failed)) passed, $nb_failed failed"
passed=$((passed + nbs - nb_failed)); failed=$((failed + nb_failed))

# further checks (docs site, browser, distributed) are added below this line

echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
