"""What a `PartnerBank` costs: each mixing function's per-batch time with a bank against the same call without one,
interleaved in one process, at the small batches a bank is for; and the bank's memory against `size` samples.

Usage: python bench/bench_bank.py [--rounds 3] [--out bench/results_bank.json] [--smoke]

Each row times the call with a full bank (`PartnerBank(64)`, filled by earlier calls) and without one, alternately, 9
samples of repeated calls each, with one torch thread; its figure is the median of the per-sample ratios (with /
without), then the median over the rounds, each round a fresh process. `gather` is what drawing from the bank alone costs
(`bank.partners`: the batch put into the bank, each sample's partners drawn, and the batch and its partners' rows written
into one pool, the partners by one gather), as a ratio to the call without a bank: with a bank, the method itself should
cost what it costs without one (it mixes the batch's own rows alone), so `with bank - gather` is about 1. Two more
ratios bound what any bank could cost: `target` is the call without a bank followed by one gather of the partners' rows
(`(k-1)*bs` rows of the bank's tensors, `index_select` at random rows), the most a bank should add; `least` is that and
the batch written into the bank (`bank.add`), what a bank written in place costs at the least. The last row
of each case is what matters in training: a whole step of a small CNN (the mix, forward, loss, backward, SGD) with
CutMix, with the bank against without. Every round runs twice, with glibc's allocator as it is and with `MALLOC` (its
large blocks kept rather than given back to the system), the columns marked "malloc".
"""
import argparse, json, os, statistics, subprocess, sys
from functools import partial
from pathlib import Path
from bench_sources import calls, sample  # this folder is on the path of a script run from it

# glibc's allocator gives the pages of a large tensor back to the system when it is freed, so a fresh one faults them in
# again (page faults, system time): every round also runs with it keeping them, as PyTorch's CUDA allocator does
MALLOC = dict(MALLOC_MMAP_THRESHOLD_=str(2**28), MALLOC_TRIM_THRESHOLD_=str(2**30))
EXTRA = ('gather', 'target', 'least')  # ratios to the call without a bank, besides `with_bank`
CASES = {'224², 2 a batch': (2, 224), '224², 8 a batch': (8, 224), '32², 32 a batch': (32, 32)}


def small_cnn():
    "The small CNN whose training step is the last row of each case: three strided convolutions, 1000 classes"
    import torch.nn as nn
    return nn.Sequential(*[m for c0, c1 in ((3, 16), (16, 32), (32, 64)) for m in (nn.Conv2d(c0, c1, 3, 2, 1), nn.ReLU())],
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1000))

def arguments(out:str):
    "The command line both bank benchmarks take; `out` is the default results file, next to this script"
    ap = argparse.ArgumentParser(description=sys.modules['__main__'].__doc__.splitlines()[0])
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--out', default=str(Path(__file__).with_name(out)))
    ap.add_argument('--smoke', action='store_true', help='tiny batches, one round, nothing written: checks that the code runs')
    ap.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    return ap.parse_args()

def merged(runs:list, ratio:str)->dict:
    "Each row's figures over the rounds `runs`: the median time in ms, the median of its ratio `ratio` (and each round's), and of those of `EXTRA` it has"
    res = {}
    for key, d0 in runs[0].items():
        case, row = key.split('|')
        if 's' not in d0: res[key] = dict(case=case, row=row, **d0); continue  # not timed (the memory row)
        res[key] = dict(case=case, row=row, ms=statistics.median(run[key]['s'] for run in runs) * 1e3,
                        **{ratio: statistics.median(run[key][ratio] for run in runs), f'{ratio}_rounds': [round(run[key][ratio], 3) for run in runs]},
                        **{e: statistics.median(run[key][e] for run in runs) for e in EXTRA if e in d0})
    return res


def worker(smoke:bool)->dict:
    "Every row's seconds without a bank and its ratio with one, sample by sample"
    import torch
    import mixup_nbdev.functional as mf
    torch.set_num_threads(1)
    fs = {'mixup_batch': mf.mixup_batch, 'cutmix_batch': mf.cutmix_batch,
          'cutmix_batch per sample': partial(mf.cutmix_batch, per_sample=True),
          'ricap_batch': mf.ricap_batch, 'mosaic_batch': mf.mosaic_batch}
    sources = {'ricap_batch': 4, 'mosaic_batch': 4}  # the others: a sample and one partner
    res, n_samples = {}, 2 if smoke else 9
    for case, (bs, side) in CASES.items():
        if smoke: side = 16
        torch.manual_seed(0)
        x, y = torch.rand(bs, 3, side, side), torch.randint(0, 1000, (bs,))
        targets = mf.pad_targets([dict(boxes=torch.tensor([[4., 4., side/2, side/2]]), labels=torch.tensor([1]))] * bs, (side, side))[0]
        rows = dict(fs, **{'mosaic_detection (images, boxes)': lambda x, y, **kw: mf.mosaic_detection(x, targets, **kw)})
        for row, f in rows.items():
            bank = mf.PartnerBank(64)
            for _ in range(64 // bs + 1): f(x, y, bank=bank)  # full
            plain, banked = (lambda: f(x, y)), (lambda: f(x, y, bank=bank))
            k = sources.get(row, 2)
            def target():
                "The call without a bank, then one gather of its partners' rows from the bank"
                f(x, y)
                i = torch.randint(0, bank.size, ((k-1)*bs,))
                return [r.index_select(0, i) for r in bank.rows]
            extra = dict(gather=lambda: bank.partners((x, y), k), target=target, least=lambda: (target(), bank.add((x, y))))
            if row not in fs: extra = {}  # a detection bank holds the boxes too
            n = calls(plain, .002 if smoke else .02)
            a, b, t = [], [], {e: [] for e in extra}
            for _ in range(n_samples):
                a.append(sample(plain, n)); b.append(sample(banked, n))
                for e, g in extra.items(): t[e].append(sample(g, n))
            ratio = lambda ts: statistics.median(p / q for p, q in zip(ts, a)) if ts else float('nan')
            res[f'{case}|{row}'] = dict(s=statistics.median(a), with_bank=ratio(b), **{e: ratio(t.get(e)) for e in EXTRA})
        # what matters in training: a whole step, forward and backward of a small CNN, with the mix and its loss
        torch.manual_seed(0)
        model = small_cnn()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        def step(bank=None):
            m = mf.cutmix_batch(x, y, bank=bank)
            loss = m.loss(torch.nn.functional.cross_entropy, model(m.xb[0]))
            opt.zero_grad(); loss.backward(); opt.step()
        bank = mf.PartnerBank(64)
        for _ in range(64 // bs + 1): step(bank)
        n = calls(step, .002 if smoke else .05)
        a, b = [], []
        for _ in range(n_samples): a.append(sample(step, n)); b.append(sample(lambda: step(bank), n))
        res[f'{case}|a training step of a small CNN (cutmix_batch)'] = dict(s=statistics.median(a), with_bank=statistics.median(p / q for p, q in zip(b, a)),
                                                                          **dict.fromkeys(EXTRA, float('nan')))
        bank = mf.PartnerBank(64)
        mf.mixup_batch(x, y, bank=bank)
        res[f'{case}|memory'] = dict(bank_bytes=sum(r.nbytes for r in bank.rows), size_samples_bytes=64 * (x[0].nbytes + y[0].nbytes))
    return res

def main():
    args = arguments('results_bank.json')
    if args.worker: return print(json.dumps(worker(args.smoke)))
    here = str(Path(__file__).resolve().parents[1])
    runs, runs_malloc = [], []
    for r in range(1 if args.smoke else args.rounds):
        for malloc, into in ((False, runs), (True, runs_malloc)):
            env = dict(os.environ, PYTHONPATH=here, OMP_NUM_THREADS='1', **(MALLOC if malloc else {}))
            cmd = [sys.executable, __file__, '--worker'] + (['--smoke'] if args.smoke else [])
            out = subprocess.run(cmd, env=env, cwd='/', capture_output=True, text=True, check=True)
            into.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f'round {r+1}', flush=True)
    res, res_malloc = merged(runs, 'with_bank'), merged(runs_malloc, 'with_bank')
    for k, d in res.items():
        if 'with_bank' in d: d.update({f'{e}_malloc': res_malloc[k][e] for e in ('with_bank', *EXTRA)})
    w = max(len(k) for k in res)
    print(f"{'row':{w}}  ms (no bank)  with bank / without  (rounds)  gather, target, least / without  the same 4 (malloc)")
    for k, d in res.items():
        if d['row'] == 'memory': print(f"{k:{w}}  bank {d['bank_bytes']} bytes, 64 samples {d['size_samples_bytes']} bytes")
        else: print(f"{k:{w}}  {d['ms']:11.3f}  {d['with_bank']:19.3f}  {d['with_bank_rounds']}  "
                    + ', '.join(f"{d[e]:.3f}" for e in EXTRA) + '  ' + ', '.join(f"{d[e + '_malloc']:.3f}" for e in ('with_bank', *EXTRA)))
    bad = [k for k, d in res.items() if d['row'] == 'memory' and d['bank_bytes'] != d['size_samples_bytes']]
    if bad: sys.exit(f"a bank's memory is not exactly its size in samples: {bad}")
    if not args.smoke: Path(args.out).write_text(json.dumps(dict(rounds=args.rounds, threads=1, rows=res), indent=1))

if __name__ == '__main__': main()
