"""Import time of `mixup_nbdev.mixup` against fastai's own `fastai.callback.mixup`, each in a fresh Python process.

Usage: python bench/bench_import.py [--rounds 11] [--out bench/results_import.json]

Each round imports every module once, in its own new process, in an order that alternates between rounds so that
noise hits all alike; one warm-up round (which fills the file cache) is not counted. The time is measured inside the
process, around the import statement alone (the interpreter's start-up is left out). Target: ours takes no more than
fastai's + 10 %. `mixup_nbdev.functional` (PyTorch only) and `fastai.vision.all` are shown for scale.
Also checks that importing `mixup_nbdev.mixup` prints nothing beyond what importing fastai.basics prints.
"""
import argparse, json, os, platform, statistics, subprocess, sys, time
from pathlib import Path

OURS, THEIRS = 'mixup_nbdev.mixup', 'fastai.callback.mixup'
MODULES = [OURS, THEIRS, 'mixup_nbdev.functional', 'fastai.vision.all']
TARGET = 1.10  # ours / fastai's
CODE = 'import time; t = time.perf_counter(); import {m}; print(time.perf_counter() - t)'


def once(m):
    r = subprocess.run([sys.executable, '-c', CODE.format(m=m)], capture_output=True, text=True, check=True,
                       env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
    return float(r.stdout.split()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--rounds', type=int, default=11)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results_import.json'), help="'' to write nothing")
    a = ap.parse_args()
    run = lambda m: subprocess.run([sys.executable, '-c', f'import {m}'], capture_output=True, text=True)
    quiet, base = run(OURS), run('fastai.basics')  # what fastai itself prints on import is not ours
    printed = [l for l in (quiet.stdout + quiet.stderr).splitlines() if l not in (base.stdout + base.stderr).splitlines()]
    for m in MODULES: once(m)  # warm-up
    times = {m: [] for m in MODULES}
    for i in range(a.rounds):
        for m in (MODULES if i % 2 == 0 else MODULES[::-1]): times[m].append(once(m))
    med = {m: statistics.median(v) for m, v in times.items()}
    ratio = med[OURS] / med[THEIRS]
    from importlib.metadata import version
    res = dict(
        what='seconds to import each module in a fresh process (median of the rounds), the start-up of Python excluded',
        rounds=a.rounds, median_s={m: round(v, 4) for m, v in med.items()},
        spread_s={m: [round(min(v), 4), round(max(v), 4)] for m, v in times.items()},
        ratio_ours_to_fastai=round(ratio, 3), target=f'<= {TARGET}', target_met=ratio <= TARGET,
        import_prints_nothing_of_ours=not printed, printed_beyond_fastai=printed,
        fastai_basics_prints=(base.stdout + base.stderr)[-500:],
        versions={p: version(p) for p in ('mixup_nbdev', 'fastai', 'fastcore', 'torch')},
        python=platform.python_version(), machine=f'{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at the end',
        date=time.strftime('%Y-%m-%d'))
    for m in MODULES: print(f'{m:26s} {med[m]*1000:7.0f} ms  (min {min(times[m])*1000:.0f}, max {max(times[m])*1000:.0f})')
    print(f'{OURS} / {THEIRS}: {ratio:.3f} (target <= {TARGET}: {"met" if ratio <= TARGET else "NOT met"}); '
          f'importing it prints {"nothing beyond what fastai.basics prints" if not printed else printed}')
    if a.out: Path(a.out).write_text(json.dumps(res, indent=1) + '\n'); print(f'wrote {a.out}')
    return 0


if __name__ == '__main__': sys.exit(main())
