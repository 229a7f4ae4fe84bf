#!/usr/bin/env python
"""What Manifold Mixup costs: mixing at a layer against `torch.lerp` of two tensors of the layer's size, and fits of the
tabular tutorial's model with `ManifoldMixup`, with `OutputMixup` and without mixing.

Run from the repository root, in the development environment (nothing is installed or downloaded):

    python bench/bench_manifold.py           # writes bench/results_manifold.json (about 2 minutes on 2 cores)
    python bench/bench_manifold.py --quick   # a short look; writes nothing
    python bench/bench_manifold.py --smoke   # tiny sizes, one round: checks that everything runs (tools/test.sh)

1. At a layer. The activations are those of the tabular tutorial's model (the joined embeddings and numbers, and the
   two hidden blocks, batch of 32), found with hooks on one real batch, and the output of a residual block of a CIFAR-
   sized CNN (64×64×32×32). For each, in the same interleaved rounds: `torch.lerp(h, h2, w)` of two ready tensors (what
   MixUp's blend costs at least), `mix_hidden(h, lam, shift)` (the partners and the blend), a module call under
   `mixing_at` (entering it, the hook that mixes, leaving it) and the same module call without it, and the plain blend
   `torch.lerp(h.roll(-shift, 0), h, lam)` (what `mix_hidden` does without its trick: a rolled copy, and autograd's
   backward). The activations require a gradient, as in training. The module is an
   `nn.Identity`, so the difference of the last two is exactly what `mixing_at` adds to a forward pass, whatever the
   layer computes. A figure is the median over rounds.
2. Fits. The tutorial's setup (the breast cancer frame, `tabular_learner(layers=[200, 100])`, batches of 32,
   `fit_one_cycle(..., 1e-2)`, one torch thread). One learner per variant, built from the same seed; each round trains
   each of them for a few epochs (`--epochs`, 4), in a new random order, so that a change of the machine's speed hits
   every variant of a round alike (whole 20-epoch fits, interleaved, varied by ±10 % from round to round on a 2-core
   VM: more than the 3 % to be resolved). A variant's overhead is the median over rounds of its time over the time
   without mixing of the same round, minus one, with the quartiles. Besides the two callbacks: a callback that does
   nothing (what fastai's events cost any callback), and `ManifoldMixup` with the mixed loss computed by two calls of
   `CrossEntropyLossFlat` (the plain version of its fast path): the trick pays when it is faster in three rounds out of
   four (the lower quartile of the difference is above 0).
"""
import argparse, json, math, os, random, sys, time, gc, warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
CNN_SHAPE, SMOKE_CNN_SHAPE = (64, 64, 32, 32), (8, 4, 4, 4)
TARGETS = dict(layer='the cost added at a layer (mix_hidden, and the hook of mixing_at) no more than torch.lerp of two tensors of that size',
               fit='a fit with ManifoldMixup or OutputMixup within 3 % of the fit without mixing')

def cancer_dls(bs=32):
    "The tabular tutorial's data: the breast cancer frame with two categorical and five continuous columns, the same validation rows"
    from fastai.tabular.all import TabularDataLoaders, RandomSplitter, Categorify, Normalize, range_of
    from sklearn.datasets import load_breast_cancer
    import pandas as pd
    df = load_breast_cancer(as_frame=True).frame
    df['size'] = pd.qcut(df['mean radius'], 4, labels=['s', 'm', 'l', 'xl']).astype(str)
    df['texture'] = pd.qcut(df['mean texture'], 3, labels=['smooth', 'mid', 'rough']).astype(str)
    df['diagnosis'] = df['target'].map({0: 'malignant', 1: 'benign'})
    conts = ['mean smoothness', 'mean compactness', 'mean concavity', 'worst area', 'worst symmetry']
    return TabularDataLoaders.from_df(df, y_names='diagnosis', cat_names=['size', 'texture'], cont_names=conts,
                                      procs=[Categorify, Normalize], valid_idx=RandomSplitter(0.25, seed=42)(range_of(df))[1],
                                      bs=bs, num_workers=0)

def tabular_shapes(dls):
    "The shape of the activations at each site `ManifoldMixup` finds in the tutorial's model, on one training batch"
    import torch
    from fastai.tabular.all import tabular_learner
    from mixup_nbdev.manifold import mixable_sites
    learn = tabular_learner(dls, layers=[200, 100])
    shapes, hs = {}, []
    def keep(n, t): shapes.setdefault(n, tuple(t.shape))  # returns None: the hooks change nothing
    for s in mixable_sites(learn.model):
        if s.at_input: hs.append(s.module.register_forward_pre_hook(lambda m, a, n=s.name: keep(n, a[0])))
        else: hs.append(s.module.register_forward_hook(lambda m, a, o, n=s.name: keep(n, o)))
    xcat, xcont, _ = dls.one_batch()
    with torch.no_grad(): learn.model.eval()(xcat, xcont)
    for h in hs: h.remove()
    return {f"tabular {'join (input of layers)' if n == 'layers' else n}": v for n, v in shapes.items()}

def layer_costs(shapes, rounds, warmup=20):
    "Median seconds of each candidate at each shape, interleaved in a new random order every round"
    import torch
    from torch import nn
    from mixup_nbdev.functional import sample_lam, draw_shift
    from mixup_nbdev.manifold import mix_hidden, mixing_at
    rows = []
    for key, shape in shapes.items():
        torch.manual_seed(0)
        h, h2 = torch.randn(shape, requires_grad=True), torch.randn(shape, requires_grad=True)  # activations in training
        bs, ident = shape[0], nn.Identity()
        w = torch.rand(bs, *[1]*(len(shape)-1))
        st = {}
        def draw(): st['lam'], st['shift'] = sample_lam(.4, bs, larger=True), draw_shift(bs)
        def hooked():
            with mixing_at(ident, st['lam'], st['shift']): return ident(h)
        wl = lambda: st['lam'].view(-1, *[1]*(len(shape)-1))
        cands = {'torch.lerp of two tensors': lambda: torch.lerp(h2, h, w),
                 'mix_hidden': lambda: mix_hidden(h, st['lam'], st['shift']),
                 'plain: lerp with a rolled copy': lambda: torch.lerp(h.roll(-st['shift'], 0), h, wl()),
                 'module call under mixing_at': hooked,
                 'module call': lambda: ident(h)}
        times, order, shuffle = {k: [] for k in cands}, list(cands), random.Random(0).shuffle
        gc.disable()
        try:
            for r in range(warmup + rounds):
                random.seed(r); torch.manual_seed(r); draw()
                shuffle(order)
                for k in order:
                    t0 = time.perf_counter(); res = cands[k](); t1 = time.perf_counter()
                    del res
                    if r >= warmup: times[k].append(t1 - t0)
                if r % 50 == 0: gc.collect()
        finally: gc.enable()
        med = {k: sorted(v)[len(v)//2] for k, v in times.items()}
        lerp = med['torch.lerp of two tensors']
        added = med['module call under mixing_at'] - med['module call']
        for k in cands:
            rows.append(dict(site=key, shape=list(shape), mib=round(h.numel()*4/2**20, 3), candidate=k, median_us=1e6*med[k],
                             q25_us=1e6*sorted(times[k])[len(times[k])//4], q75_us=1e6*sorted(times[k])[3*len(times[k])//4],
                             ratio_to_lerp=med[k]/lerp, n=len(times[k])))
        rows.append(dict(site=key, shape=list(shape), mib=round(h.numel()*4/2**20, 3), candidate='added by mixing_at (difference)',
                         median_us=1e6*added, ratio_to_lerp=added/lerp, n=len(times['module call'])))
    return rows

def _plain_loss(call):
    "`call` with the mixed loss computed without its fast path: `CrossEntropyLossFlat` called for the targets and for the partners' targets"
    from bench_mix import patched, defining_module
    return patched(defining_module('_flat_ce'), '_flat_ce', lambda *a: None, call)()

def fits(dls_fn, rounds, epochs):
    "Seconds of `fit_one_cycle(epochs)` of each variant's learner, in a new random order every round; overheads paired by round"
    from fastai.tabular.all import tabular_learner, accuracy, set_seed, Callback
    from mixup_nbdev.manifold import ManifoldMixup, OutputMixup
    class Nothing(Callback):
        "A training callback that does nothing"
        run_valid = False
        def before_batch(self): pass
    none = lambda call: call()
    variants = {'no mixing': ([], none), 'a callback that does nothing': ([Nothing()], none),
                'ManifoldMixup': ([ManifoldMixup()], none), 'OutputMixup': ([OutputMixup()], none),
                'ManifoldMixup, plain: loss twice': ([ManifoldMixup()], _plain_loss)}
    learners = {}
    for k, (cbs, _) in variants.items():
        set_seed(0, reproducible=True)
        learners[k] = tabular_learner(dls_fn(), layers=[200, 100], metrics=accuracy, cbs=cbs)
    times, order = {k: [] for k in variants}, list(variants)
    load = [os.getloadavg()[0]]
    for r in range(rounds + 1):  # round 0 warms up
        random.Random(r).shuffle(order)
        for k in order:
            learn = learners[k]
            with learn.no_bar(), learn.no_logging():
                t0 = time.perf_counter(); variants[k][1](lambda: learn.fit_one_cycle(epochs, 1e-2)); t = time.perf_counter() - t0
            if r: times[k].append(t)
        if r % 5 == 0: load.append(os.getloadavg()[0])
    load.append(os.getloadavg()[0])
    q = lambda v, f: sorted(v)[int(f*(len(v)-1) + .5)]
    base, n_batches = times['no mixing'], len(learners['no mixing'].dls.train)
    rows = []
    for k in variants:
        paired = [100*(t/t0 - 1) for t, t0 in zip(times[k], base)]
        rows.append(dict(variant=k, median_s=q(times[k], .5), min_s=min(times[k]), max_s=max(times[k]),
                         overhead_pct=q(paired, .5), overhead_q25_pct=q(paired, .25), overhead_q75_pct=q(paired, .75),
                         per_batch_us=1e6*q(base, .5)*q(paired, .5)/100/(epochs*n_batches), times_s=times[k],
                         accuracy=float(learners[k].recorder.values[-1][-1])))
    tricks = []
    for name, plain in (('mixed loss from one log_softmax', 'ManifoldMixup, plain: loss twice'),):
        gain = [100*(tp - tt)/t0 for tp, tt, t0 in zip(times[plain], times['ManifoldMixup'], base)]
        tricks.append(dict(trick=name, plain_variant=plain, gain_pct=q(gain, .5), gain_q25_pct=q(gain, .25), gain_q75_pct=q(gain, .75),
                           gain_us_per_batch=1e6*q(base, .5)*q(gain, .5)/100/(epochs*n_batches), pays=bool(q(gain, .25) > 0)))
    return rows, tricks, load, n_batches

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--smoke', action='store_true', help='tiny sizes, one round of one-epoch fits: checks that everything runs; writes nothing')
    ap.add_argument('--quick', action='store_true', help='fewer rounds, to look; writes nothing')
    ap.add_argument('--rounds', type=int, default=30, help='rounds: in each, every variant trains for `--epochs` epochs')
    ap.add_argument('--layer_rounds', type=int, default=400, help='calls of each candidate at a tabular layer (a tenth of them at the CNN block)')
    ap.add_argument('--epochs', type=int, default=4, help='epochs per round (the tutorial fits 20)')
    ap.add_argument('--threads', type=int, default=1, help="torch's threads (the tutorial's: 1)")
    ap.add_argument('--out', default=str(HERE/'results_manifold.json'))
    a = ap.parse_args()
    warnings.filterwarnings('ignore')
    import torch
    torch.set_num_threads(a.threads)
    from bench_mix import machine, library_version
    lib0, t_start = library_version(), time.time()
    load0 = os.getloadavg()[0]
    dls = cancer_dls()
    shapes = tabular_shapes(dls)
    shapes['CNN residual block output'] = SMOKE_CNN_SHAPE if a.smoke else CNN_SHAPE
    if a.smoke: shapes = {k: (4,) + tuple(v[1:]) if k.startswith('tabular') else v for k, v in shapes.items()}
    lr = 3 if a.smoke else 100 if a.quick else a.layer_rounds
    layer = layer_costs({k: v for k, v in shapes.items() if k.startswith('tabular')}, lr, 2 if a.smoke else 20)
    layer += layer_costs({k: v for k, v in shapes.items() if not k.startswith('tabular')}, max(3, lr//10), 2 if a.smoke else 5)
    rounds, epochs = (1, 1) if a.smoke else (6, a.epochs) if a.quick else (a.rounds, a.epochs)
    fit_rows, tricks, load, n_batches = fits(cancer_dls, rounds, epochs)
    for site in [k for k, v in shapes.items() if math.prod(v) >= 2**16]:  # where `mix_hidden` blends with its own backward
        # against lerp with a rolled copy: pays where their quartiles don't overlap
        r = {x['candidate']: x for x in layer if x['site'] == site}
        t, pl = r['mix_hidden'], r['plain: lerp with a rolled copy']
        tricks.append(dict(trick=f'blend without a rolled copy, {site}', plain_variant=pl['candidate'], gain_us=pl['median_us'] - t['median_us'],
                           gain_pct=100*(pl['median_us']/t['median_us'] - 1), pays=bool(t['q75_us'] < pl['q25_us'])))
    load = [load0] + load

    print(f"mixing at a layer ({torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() > 1 else ''}), median µs, and as a ratio to torch.lerp of two tensors of the size:")
    for r in layer:
        print(f"  {r['site']:<34}{str(tuple(r['shape'])):<20}{r['candidate']:<34}{r['median_us']:>10.1f} µs  ×{r['ratio_to_lerp']:.2f}")
    print(f"the tabular tutorial's training: {rounds} interleaved rounds of {epochs} epochs of {n_batches} batches; overhead against no mixing, paired by round")
    for r in fit_rows:
        print(f"  {r['variant']:<40}{r['median_s']:>8.3f} s  {r['overhead_pct']:+6.1f} % (quartiles {r['overhead_q25_pct']:+.1f} to "
              f"{r['overhead_q75_pct']:+.1f} %)  {r['per_batch_us']:>6.0f} µs per batch")
    for t in tricks:
        if 'gain_q25_pct' in t: print(f"  trick {t['trick']:<34}gain {t['gain_pct']:+.1f} % of a fit (quartiles {t['gain_q25_pct']:+.1f} to "
                                      f"{t['gain_q75_pct']:+.1f} %), {t['gain_us_per_batch']:.0f} µs per batch: {'pays' if t['pays'] else 'does not pay'}")
        else: print(f"  trick {t['trick']}: gain {t['gain_us']:.1f} µs ({t['gain_pct']:+.1f} %): {'pays' if t['pays'] else 'does not pay'}")
    print(f"load average (1 min) during the run: {min(load):.2f} to {max(load):.2f}; {time.time() - t_start:.0f} s")
    ok = all(r['median_us'] > 0 for r in layer if r['candidate'] != 'added by mixing_at (difference)') and all(len(r['times_s']) == rounds for r in fit_rows)
    if a.smoke:
        print('smoke run:', 'everything ran' if ok else 'something is missing'); sys.exit(0 if ok else 1)
    if a.quick: return
    if library_version() != lib0: sys.exit("the library's source changed during the run: its figures mix two versions; run it again")
    added = {r['site']: r['ratio_to_lerp'] for r in layer if r['candidate'] == 'added by mixing_at (difference)'}
    mh = {r['site']: r['ratio_to_lerp'] for r in layer if r['candidate'] == 'mix_hidden'}
    met = dict(layer={s: bool(mh[s] <= 1 and added[s] <= 1) for s in mh},
               fit={r['variant']: bool(r['overhead_pct'] <= 3) for r in fit_rows if r['variant'] in ('ManifoldMixup', 'OutputMixup')})
    defaults = dict(rounds=30, layer_rounds=400, epochs=4, threads=1)
    out = dict(command='python bench/bench_manifold.py' + ''.join(f' --{k} {getattr(a, k)}' for k, v in defaults.items() if getattr(a, k) != v),
               started=time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(t_start)), seconds=round(time.time() - t_start),
               library=lib0, machine=machine(), load_1min=load, targets=TARGETS, met=met,
               layer=layer, fit=dict(epochs=epochs, batches_per_epoch=n_batches, bs=32, rounds=rounds, rows=fit_rows), tricks=tricks)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")

if __name__ == '__main__': main()
