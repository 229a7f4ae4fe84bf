"""Import time of `mixup_nbdev.mixup` against fastai's own `fastai.callback.mixup`, each in a fresh Python process; and
what the PyTorch-only modules (`mixup_nbdev.functional`, the drop-ins `mixup_nbdev.compat.timm` and
`mixup_nbdev.compat.torchvision`) add to `import torch`.

Usage: python bench/bench_import.py [--rounds 11] [--torch-rounds 41] [--out bench/results_import.json]

Each round imports every module once, in its own new process, in an order that alternates between rounds so that
noise hits all alike; one warm-up round (which fills the file cache) is not counted. The time is measured inside the
process, around the import statement alone (the interpreter's start-up is left out). Target: ours takes no more than
fastai's + 10 %. `mixup_nbdev.functional` (PyTorch only) and `fastai.vision.all` are shown for scale.
Also checks that importing `mixup_nbdev.mixup` prints nothing beyond what importing fastai.basics prints.

What a PyTorch-only module adds to `import torch`: each process imports torch, then the module, and times both
imports; the module's time is what it adds (torch's own import, some seconds that vary by a tenth from one process to
the next, is timed but not subtracted across processes). `--torch-rounds` rounds, alternating as above; the figure
is the median, the noise its quartiles and extremes over the rounds. Target: at most 50 ms each; importing them
prints nothing beyond what importing torch prints.
"""
import argparse, json, os, platform, statistics, subprocess, sys, time
from pathlib import Path

OURS, THEIRS = 'mixup_nbdev.mixup', 'fastai.callback.mixup'
MODULES = [OURS, THEIRS, 'mixup_nbdev.functional', 'fastai.vision.all']
TARGET = 1.10  # ours / fastai's
CODE = 'import time; t = time.perf_counter(); import {m}; print(time.perf_counter() - t)'
ADDED = ['mixup_nbdev.functional', 'mixup_nbdev.compat.timm', 'mixup_nbdev.compat.torchvision']
ADDED_TARGET = 0.050  # seconds each adds to `import torch`
CODE_ADDED = ('import time; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); import {m}; '
              'print(t1 - t0, time.perf_counter() - t1)')


def once(m):
    r = subprocess.run([sys.executable, '-c', CODE.format(m=m)], capture_output=True, text=True, check=True,
                       env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
    return float(r.stdout.split()[-1])


def after_torch(m):
    "Seconds to import torch, then seconds to import `m`, in a fresh process"
    r = subprocess.run([sys.executable, '-c', CODE_ADDED.format(m=m)], capture_output=True, text=True, check=True,
                       env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
    return tuple(map(float, r.stdout.split()[-2:]))


def library():
    "The package each process imports (the first on its path: from the repository's root, this clone's) and its commit"
    r = subprocess.run([sys.executable, '-c', 'import mixup_nbdev; print(mixup_nbdev.__file__)'], capture_output=True, text=True)
    pkg = Path(r.stdout.strip()).parent
    git = lambda *a: subprocess.run(['git', *a], cwd=pkg, capture_output=True, text=True).stdout.strip()
    stamp = pkg.parent/'COMMIT'  # a copy made with `git archive` says which commit it is
    commit = stamp.read_text().strip() if stamp.exists() else git('rev-parse', '--short', 'HEAD') + (
        '+dirty' if git('status', '--porcelain', '--', '.') else '')
    return dict(path=str(pkg), commit=commit)


def quartiles(v):
    "Median, quartiles and extremes, in seconds"
    q = statistics.quantiles(v, n=4)
    return dict(median=round(statistics.median(v), 4), q1=round(q[0], 4), q3=round(q[2], 4),
                min=round(min(v), 4), max=round(max(v), 4))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--rounds', type=int, default=11)
    ap.add_argument('--torch-rounds', type=int, default=41,
                    help="rounds of what the PyTorch-only modules add to torch's import")
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results_import.json'), help="'' to write nothing")
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    run = lambda m: subprocess.run([sys.executable, '-c', f'import {m}'], capture_output=True, text=True)
    quiet, base = run(OURS), run('fastai.basics')  # what fastai itself prints on import is not ours
    printed = [l for l in (quiet.stdout + quiet.stderr).splitlines() if l not in (base.stdout + base.stderr).splitlines()]
    for m in MODULES: once(m)  # warm-up
    times = {m: [] for m in MODULES}
    for i in range(a.rounds):
        for m in (MODULES if i % 2 == 0 else MODULES[::-1]): times[m].append(once(m))
    med = {m: statistics.median(v) for m, v in times.items()}
    ratio = med[OURS] / med[THEIRS]
    # what the PyTorch-only modules add to `import torch`
    torch_out = run('torch')
    printed_added = {m: [l for l in (lambda r: r.stdout + r.stderr)(run(f'torch; import {m}')).splitlines()
                         if l not in (torch_out.stdout + torch_out.stderr).splitlines()] for m in ADDED}
    for m in ADDED: after_torch(m)  # warm-up
    added, torch_s = {m: [] for m in ADDED}, []
    for i in range(a.torch_rounds):
        for m in (ADDED if i % 2 == 0 else ADDED[::-1]):
            t, d = after_torch(m); added[m].append(d); torch_s.append(t)
    added_med = {m: statistics.median(v) for m, v in added.items()}
    from importlib.metadata import version
    res = dict(
        what='seconds to import each module in a fresh process (median of the rounds), the start-up of Python excluded',
        rounds=a.rounds, median_s={m: round(v, 4) for m, v in med.items()},
        spread_s={m: [round(min(v), 4), round(max(v), 4)] for m, v in times.items()},
        ratio_ours_to_fastai=round(ratio, 3), target=f'<= {TARGET}', target_met=ratio <= TARGET,
        import_prints_nothing_of_ours=not printed, printed_beyond_fastai=printed,
        added_to_torch=dict(
            what='seconds each module adds to `import torch`: imported after torch in a fresh process, timed alone',
            rounds=a.torch_rounds, seconds={m: quartiles(v) for m, v in added.items()},
            import_torch_s=quartiles(torch_s),
            target_s=ADDED_TARGET, target_met={m: v <= ADDED_TARGET for m, v in added_med.items()},
            printed_beyond_torch=printed_added),
        fastai_basics_prints=(base.stdout + base.stderr)[-500:],
        versions={p: version(p) for p in ('mixup_nbdev', 'fastai', 'fastcore', 'torch')}, library=library(),
        python=platform.python_version(),
        machine=f'{os.cpu_count()} CPUs, load {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end',
        date=time.strftime('%Y-%m-%d'))
    for m in MODULES: print(f'{m:26s} {med[m]*1000:7.0f} ms  (min {min(times[m])*1000:.0f}, max {max(times[m])*1000:.0f})')
    print(f'{OURS} / {THEIRS}: {ratio:.3f} (target <= {TARGET}: {"met" if ratio <= TARGET else "NOT met"}); '
          f'importing it prints {"nothing beyond what fastai.basics prints" if not printed else printed}')
    q = quartiles(torch_s)
    print(f'\nadded to `import torch` ({q["median"]*1000:.0f} ms, quartiles {q["q1"]*1000:.0f} to {q["q3"]*1000:.0f}), '
          f'{a.torch_rounds} rounds, target <= {ADDED_TARGET*1000:.0f} ms:')
    for m, v in added.items():
        q = quartiles(v)
        print(f'{m:32s} {q["median"]*1000:6.1f} ms  (quartiles {q["q1"]*1000:.1f} to {q["q3"]*1000:.1f}, '
              f'min {q["min"]*1000:.1f}, max {q["max"]*1000:.1f}): '
              f'{"met" if added_med[m] <= ADDED_TARGET else "NOT met"}; prints '
              + ('nothing beyond torch' if not printed_added[m] else str(printed_added[m])))
    if a.out: Path(a.out).write_text(json.dumps(res, indent=1) + '\n'); print(f'wrote {a.out}')
    return 0


if __name__ == '__main__': sys.exit(main())
