#!/usr/bin/env python
"""End-to-end cost of mixing: fits of the tutorial model (`small_cnn` on the offline digits) with and without each callback.

Run from the repository root, in the development environment:

    python bench/bench_fit.py              # writes bench/results_fit.json
    python bench/bench_fit.py --quick      # a short look; writes nothing

Every round fits each variant once, in a new random order, from the same seed (same weights, same batches), so
machine noise hits all alike; a figure is the median wall time of `fit` over rounds, and its overhead is that median
over the median without mixing, minus one. On a small shared machine that difference is within the noise of a fit, so
each fit with a callback also times the callback itself in each training batch: its `before_batch` (the mixing), its
`after_pred` (which hands the mixed loss to the learner) and the mixed loss, `lf`, which the learner calls instead of
its loss (so the figure is an upper bound: it counts the whole loss, not what mixing adds to it). Their median per
batch, times the number of training batches, as a share of the fit's wall time is the callback's share (a median,
since a fit's first batch builds caches, and a batch now and then is slowed by the machine).
"""
import argparse, json, os, random, sys, time, warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='two rounds, to look; writes nothing')
    ap.add_argument('--rounds', type=int, default=15, help='fits of each variant')
    ap.add_argument('--epochs', type=int, default=2, help='epochs per fit')
    ap.add_argument('--out', default=str(HERE/'results_fit.json'))
    ap.add_argument('--threads', type=int, help="torch's threads (default: torch's own choice, one per core); 1 on a machine other jobs keep busy")
    a = ap.parse_args()
    warnings.filterwarnings('ignore')
    from fastai.vision.all import Learner, CrossEntropyLossFlat, accuracy, set_seed
    import torch
    if a.threads: torch.set_num_threads(a.threads)
    from mixup_nbdev.data import digits_dls, small_cnn
    from mixup_nbdev.mixup import MixUp, CutMix
    variants = {'no mixing': lambda: None, 'MixUp': lambda: MixUp(.4), 'CutMix': lambda: CutMix(1.),
                'CutMix per sample': lambda: CutMix(1., per_sample=True)}
    rounds = 2 if a.quick else a.rounds
    from bench_mix import machine, library_version
    lib0 = library_version()
    load = [os.getloadavg()[0]]
    set_seed(42)
    dls = digits_dls(bs=64)
    times, shares = {k: [] for k in variants}, {k: [] for k in variants}
    order = list(variants)
    for r in range(rounds + 1):  # round 0 warms up
        random.shuffle(order)
        for k in order:
            set_seed(42, reproducible=True)
            cb = variants[k]()
            spent = {'before_batch': [], 'after_pred': [], 'lf': []}
            if cb is not None:  # time the callback's own per-batch work, on the instance (fastai looks events up with getattr)
                for ev in spent:
                    def timed(*args, f=getattr(cb, ev), ts=spent[ev]):
                        t0 = time.perf_counter(); res = f(*args); ts.append(time.perf_counter() - t0); return res
                    cb.__dict__[ev] = timed
            learn = Learner(dls, small_cnn(), loss_func=CrossEntropyLossFlat(), metrics=accuracy)
            with learn.no_bar(), learn.no_logging():
                t0 = time.perf_counter(); learn.fit(a.epochs, 1e-2, cbs=cb); t = time.perf_counter() - t0
            per_batch = sorted(sum(ts) for ts in zip(*spent.values()))
            cb_s = per_batch[len(per_batch)//2] * len(per_batch) if per_batch else 0.
            if r: times[k].append(t); shares[k].append(100*cb_s/t)
        load.append(os.getloadavg()[0])
    med = {k: sorted(v)[len(v)//2] for k,v in times.items()}
    base = med['no mixing']
    rows = [dict(variant=k, median_s=med[k], min_s=min(times[k]), max_s=max(times[k]), overhead_pct=100*(med[k]/base - 1),
                 callback_pct=sorted(shares[k])[len(shares[k])//2], times_s=times[k]) for k in variants]
    n_batches = len(dls.train)
    print(f"fit of small_cnn on the digits: {a.epochs} epochs of {n_batches} batches of {dls.bs}, {rounds} interleaved rounds, "
          f"{torch.get_num_threads()} torch threads")
    for r in rows:
        print(f"  {r['variant']:<20}{r['median_s']:>8.3f} s   {r['overhead_pct']:+6.1f} %   (min {r['min_s']:.3f}, max {r['max_s']:.3f})"
              f"   callback's own time: {r['callback_pct']:.2f} % of the fit")
    print(f"load average (1 min) during the run: {min(load):.2f} to {max(load):.2f}")
    if a.quick: return
    if library_version() != lib0: sys.exit("the library's source changed during the run: its figures mix two versions; run it again")
    out = dict(command='python bench/bench_fit.py' + (f' --rounds {a.rounds}' if a.rounds != 15 else '') + (f' --epochs {a.epochs}' if a.epochs != 2 else '')
               + (f' --threads {a.threads}' if a.threads else ''),
               started=time.strftime('%Y-%m-%d %H:%M:%S %Z'), library=lib0, machine=machine(), epochs=a.epochs, batches_per_epoch=n_batches,
               bs=dls.bs, rounds=rounds, load_1min=load, rows=rows)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")

if __name__ == '__main__': main()
