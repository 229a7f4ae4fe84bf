"""What naming every mix's sources costs: each mixing function's per-batch time on this tree against an earlier one,
interleaved in one process; `Mixed.loss` of two sources against `mix_loss`; RICAP and Mosaic of class labels against
Mosaic's four rectangle copies (`mosaic_detection` of the images alone).

Usage: python bench/bench_sources.py --base DIR [--rounds 5] [--out bench/results_sources.json]

DIR is a checkout of the earlier tree (`git worktree add /tmp/base COMMIT`). Its package is copied under another name,
`mixup_base` (its imports are relative), so that one process imports both trees and times them side by side, on the
same batches, in the same memory: each row's call on this tree, then on the earlier tree, alternately, 9 samples of
repeated calls each, with one torch thread. A row's figure against the earlier tree is the median of its per-sample
ratios (this / earlier), and then the median over the rounds, each round a fresh process. The rows only this tree has
are given as ratios to `x.clone()` of the same batch.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

SIZES = {'224²': (32, 224), '32²': (128, 32)}

def calls(f, target=0.02)->int:
    "How many calls of `f` take about `target` seconds, after warming it up"
    for _ in range(3): f()
    t = time.perf_counter(); f()
    return max(1, int(target / max(time.perf_counter() - t, 1e-6)))

def sample(f, n:int)->float:
    "Seconds per call of `f`, over `n` calls"
    t = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - t) / n

def rows(mf, x, y, pred)->dict:
    "The rows both trees have, for the functional layer `mf`"
    import torch.nn.functional as F
    from functools import partial
    m2 = mf.mixup_batch(x, y)
    return {'x.clone()': lambda: x.clone(),
            'mixup_batch': lambda: mf.mixup_batch(x, y),
            'cutmix_batch': lambda: mf.cutmix_batch(x, y),
            'cutmix_batch per sample': lambda: mf.cutmix_batch(x, y, per_sample=True),
            'fmix_batch per sample': lambda: mf.fmix_batch(x, y, per_sample=True),
            'mixchoice_batch per sample (MixUp, CutMix)': lambda: mf.mixchoice_batch(
                x, y, (mf.mixup_batch, partial(mf.cutmix_batch, per_sample=True)), per_sample=True),
            'mix_loss, two sources': lambda: mf.mix_loss(F.cross_entropy, pred, m2.yb, m2.yb1, m2.lam),
            'Mixed.loss, two sources': lambda: m2.loss(F.cross_entropy, pred)}

def worker(base_parent:str)->dict:
    "Every row's seconds on this tree, and its ratio to the earlier tree's, sample by sample"
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, base_parent)
    import mixup_nbdev.functional as mf
    import mixup_base.functional as mb
    torch.set_num_threads(1)
    res = {}
    for name, (bs, side) in SIZES.items():
        torch.manual_seed(0)
        x, y = torch.rand(bs, 3, side, side), torch.randint(0, 1000, (bs,))
        pred = torch.randn(bs, 1000)
        this, base = rows(mf, x, y, pred), rows(mb, x, y, pred)
        for row in this:
            n = calls(this[row])
            calls(base[row])
            a, b = [], []
            for _ in range(9): a.append(sample(this[row], n)); b.append(sample(base[row], n))
            res[f'{name}|{row}'] = dict(s=statistics.median(a), vs_base=statistics.median(p / q for p, q in zip(a, b)))
        m4 = mf.ricap_batch(x, y, per_sample=True)
        new = {'ricap_batch': lambda: mf.ricap_batch(x, y), 'ricap_batch per sample': lambda: mf.ricap_batch(x, y, per_sample=True),
               'mosaic_batch': lambda: mf.mosaic_batch(x, y), 'mosaic_batch per sample': lambda: mf.mosaic_batch(x, y, per_sample=True),
               "mosaic_detection, images alone (Mosaic's four rectangle copies)": lambda: mf.mosaic_detection(x, None),
               'Mixed.loss, four sources (RICAP)': lambda: m4.loss(F.cross_entropy, pred)}
        for row, f in new.items(): res[f'{name}|{row}'] = dict(s=statistics.median(sample(f, calls(f)) for _ in range(9)))
    return res

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--base', help='a checkout of the earlier tree')
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--out', default=str(Path(__file__).with_name('results_sources.json')))
    ap.add_argument('--worker', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker: return print(json.dumps(worker(args.worker)))
    here = str(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(Path(args.base) / 'mixup_nbdev', Path(tmp) / 'mixup_base')
        runs = []
        for r in range(args.rounds):
            env = dict(os.environ, PYTHONPATH=here, OMP_NUM_THREADS='1')
            out = subprocess.run([sys.executable, __file__, '--worker', tmp], env=env, cwd='/', capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f'round {r+1} of {args.rounds}', flush=True)
    res = {}
    for key in runs[0]:
        size, row = key.split('|')
        d = dict(size=size, row=row, ms=statistics.median(run[key]['s'] for run in runs) * 1e3,
                 clones=statistics.median(run[key]['s'] / run[f'{size}|x.clone()']['s'] for run in runs))
        if 'vs_base' in runs[0][key]:
            d['vs_base'] = statistics.median(run[key]['vs_base'] for run in runs)
            d['vs_base_rounds'] = [round(run[key]['vs_base'], 4) for run in runs]
        res[key] = d
    Path(args.out).write_text(json.dumps(dict(base=args.base, rounds=args.rounds, threads=1, rows=res), indent=1))
    w = max(len(k) for k in res)
    print(f"{'row':{w}}  ms (this)  × x.clone()  this / base  (rounds)")
    for k, d in res.items():
        print(f"{k:{w}}  {d['ms']:9.3f}  {d['clones']:11.2f}  {d.get('vs_base', float('nan')):11.3f}  {d.get('vs_base_rounds', '')}")

if __name__ == '__main__': main()
