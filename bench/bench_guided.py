#!/usr/bin/env python
"""What SaliencyMix, TransMix, Remix and RegMixup cost, as ratios to rows measured side by side in the same run.

Run from the repository root, in the development environment (nothing is installed or downloaded):

    python bench/bench_guided.py           # writes bench/results_guided.json (a few minutes on 2 cores)
    python bench/bench_guided.py --quick   # a short look; writes nothing
    python bench/bench_guided.py --smoke   # tiny sizes, two rounds: checks that everything runs (tools/test.sh)

Every round runs each row of a group once, in a new random order, so that a change of the machine's speed hits all
alike; a figure is the median over rounds, and a ratio is that median over the median of the group's reference row.

1. saliency: at 64×3×224×224, `saliency_map(x)` against `x.clone()` (the limit row, target: at most 2 clones), and
   `saliencymix_batch`, per batch and per sample, against per-sample `cutmix_batch` (what the saliency adds to CutMix).
2. transmix: a training step of timm's ViT-S/16 at 224², batches of 8 (forward, backward, SGD step), with CutMix's
   inputs and loss, and with TransMix's (the hook on the last block, the class token's attention row, `patch_own`,
   `transmix_lam`); and that added work timed alone on the same step's tensors (target: at most 1 % of the step).
3. remix: `remix_lam` on a batch of 64 classes, and the callbacks' `before_batch` of `MixUp` and of `Remix(MixUp())` on
   64 digits at 32², in a learner set up as `fit` does, each the mean of 50 calls in a row (target: Remix at most 50 µs
   beyond its mixer).
4. regmixup: a plain PyTorch training step of `small_cnn` on 64 one-channel images at 32²: without mixing, with
   `mixup_batch`, as RegMixup trains (the clean batch and its mixed copy, `regmixup_loss`), and without mixing at 128
   samples (what a doubled batch costs).
"""
import argparse, json, random, statistics, sys, time, gc, warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
import importlib.util  # this clone's package where none is importable (a bare machine); else the one installed
if importlib.util.find_spec('mixup_nbdev') is None: sys.path.insert(0, str(HERE.parent))
import torch
import torch.nn.functional as F

def rounds_of(rows:dict, rounds:int, warmup:int=2, reps:int=1)->dict:
    "Median seconds of each row (a function of no argument), the rows run once per round in a new random order: `reps` calls in a row, their mean"
    for _ in range(warmup):
        for f in rows.values(): f()
    times = {k: [] for k in rows}
    for r in range(rounds):
        ks = list(rows); random.Random(r).shuffle(ks)
        for k in ks:
            if reps == 1: gc.collect()  # large batches: the collector's pauses stay out of the timings (µs rows: it would empty the caches)
            t0 = time.perf_counter()
            for _ in range(reps): rows[k]()
            times[k].append((time.perf_counter() - t0) / reps)
    return {k: statistics.median(v) for k, v in times.items()}

def saliency_rows(bs, size, rounds):
    from mixup_nbdev.functional import saliency_map, saliencymix_batch, cutmix_batch
    x, y = torch.rand(bs, 3, size, size), torch.randint(0, 10, (bs,))
    rows = {'x.clone()': lambda: x.clone(), 'saliency_map(x)': lambda: saliency_map(x),
            'cutmix_batch(per_sample=True)': lambda: cutmix_batch(x, y, per_sample=True),
            'saliencymix_batch': lambda: saliencymix_batch(x, y),
            'saliencymix_batch(per_sample=True)': lambda: saliencymix_batch(x, y, per_sample=True)}
    return rounds_of(rows, rounds)

def transmix_rows(bs, size, rounds, tiny=False):
    import timm
    from mixup_nbdev.functional import draw_cutmix, cutmix_batch, class_attention, patch_own, transmix_lam
    torch.manual_seed(0); random.seed(0)
    kw = dict(img_size=size, patch_size=4, embed_dim=32, depth=2, num_heads=2) if tiny else dict(img_size=size)  # ViT-S/16 below
    vit = (timm.models.vision_transformer.VisionTransformer(num_classes=10, **kw) if tiny
           else timm.create_model('vit_small_patch16_224', pretrained=False, num_classes=10))
    opt = torch.optim.SGD(vit.parameters(), lr=1e-3)
    x, y = torch.randn(bs, 3, size, size), torch.randint(0, 10, (bs,))
    ca = class_attention(vit)
    def step(transmix):
        r = draw_cutmix(x, y); m = cutmix_batch(x, y, params=r)
        if transmix:
            with ca: pred = vit(m.xb[0])
            m = m._replace(lam=transmix_lam(ca.attn, patch_own(r.own(x), ca.patch_size)))
        else: pred = vit(m.xb[0])
        loss = m.loss(F.cross_entropy, pred)
        opt.zero_grad(); loss.backward(); opt.step()
    # the added work alone, on one step's tensors: the hook's attention row from the block's qkv, then the λ
    qkv = {}
    h = vit.blocks[-1].attn.qkv.register_forward_hook(lambda mod, a, o: qkv.update(o=o))
    with torch.no_grad(): vit(x)
    h.remove()
    r = draw_cutmix(x, y)
    def added():
        with ca: ca._qkv(None, None, qkv['o'])
        transmix_lam(ca.attn, patch_own(r.own(x), ca.patch_size))
    res = rounds_of({'step with CutMix': lambda: step(False), 'step with TransMix': lambda: step(True)}, rounds, warmup=1)
    res.update(rounds_of({"TransMix's added work alone": added}, max(rounds, 20)))
    return res

def remix_rows(bs, size, rounds):
    from fastai.vision.all import Learner, CrossEntropyLossFlat
    from mixup_nbdev.functional import remix_lam
    from mixup_nbdev.mixup import MixUp
    from mixup_nbdev.guided_mixup import Remix
    from mixup_nbdev.data import digits_dls, small_cnn
    dls = digits_dls(bs=bs, size=size, num_workers=0)
    b = dls.one_batch()
    lam, y, y1, counts = torch.rand(bs), torch.randint(0, 10, (bs,)), torch.randint(0, 10, (bs,)), torch.randint(10, 100, (10,))
    def learner(cb):
        learn = Learner(dls, small_cnn(), loss_func=CrossEntropyLossFlat(), cbs=cb)
        learn.epoch, learn.training, learn.pct_train = 0, True, 0.
        learn._split(b); learn('before_fit')
        return learn
    l_mix, l_remix = learner(MixUp(1.)), learner(Remix(MixUp(1.)))
    def before_batch(learn): learn._split(b); learn.mix_up.before_batch() if hasattr(learn, 'mix_up') else learn.remix.before_batch()
    rows = {'remix_lam': lambda: remix_lam(lam, y, y1, counts), 'MixUp.before_batch': lambda: before_batch(l_mix),
            'Remix(MixUp).before_batch': lambda: before_batch(l_remix)}
    return rounds_of(rows, rounds, warmup=20, reps=50)

def regmixup_rows(bs, size, rounds):
    from mixup_nbdev.functional import mixup_batch, regmixup_loss
    from mixup_nbdev.data import small_cnn
    torch.manual_seed(0)
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = torch.randn(2*bs, 1, size, size), torch.randint(0, 10, (2*bs,))
    def step(kind):
        xb, yb = (x, y) if kind == 'double' else (x[:bs], y[:bs])
        if kind == 'mixup':
            m = mixup_batch(xb, yb); loss = m.loss(F.cross_entropy, model(m.xb[0]))
        elif kind == 'regmixup':
            m = mixup_batch(xb, yb, alpha=10.); loss = regmixup_loss(F.cross_entropy, model(torch.cat([xb, m.xb[0]])), (yb,), m)
        else: loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(); loss.backward(); opt.step()
    rows = {'no mixing': lambda: step('plain'), 'MixUp': lambda: step('mixup'), 'RegMixup (clean + mixed copy)': lambda: step('regmixup'),
            f'no mixing, {2*bs} samples': lambda: step('double')}
    return rounds_of(rows, rounds)

def report(name, res, ref):
    "Print a group of rows: each median in µs, and its ratio to the row `ref`"
    print(f'\n{name} (median over rounds; ratio to {ref!r})')
    w = max(40, *map(len, res)) + 2
    for k, v in res.items(): print(f'  {k:<{w}}{v*1e6:>12.1f} µs{v/res[ref]:>9.3f}x')

def write_results(path, started:str, **fields):
    "Write a run's results to `path` as JSON, with the command, the times, the library's commit (and whether its source had changes) and the load"
    import os, subprocess
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=HERE).stdout.strip() or 'unknown'
    dirty = bool(subprocess.run(['git', 'status', '--porcelain', '--', 'mixup_nbdev'], capture_output=True, text=True, cwd=HERE.parent).stdout.strip())
    out = dict(command=' '.join(sys.argv), started=started, finished=time.strftime('%Y-%m-%d %H:%M:%S %Z'), library=dict(commit=commit, dirty=dirty),
               load_average=os.getloadavg(), torch=torch.__version__, threads=torch.get_num_threads(), **fields)
    Path(path).write_text(json.dumps(out, indent=1) + '\n'); print(f'wrote {path}')

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true'); ap.add_argument('--smoke', action='store_true')
    ap.add_argument('--out', default=str(HERE/'results_guided.json'))
    a = ap.parse_args()
    warnings.filterwarnings('ignore')
    n = 2 if a.smoke else 5 if a.quick else 25
    started = time.strftime('%Y-%m-%d %H:%M:%S %Z')
    sal = saliency_rows(4, 32, n) if a.smoke else saliency_rows(64, 224, n)
    report('saliency, 64x3x224x224' if not a.smoke else 'saliency (smoke)', sal, 'x.clone()')
    tm = transmix_rows(2, 16, n, tiny=True) if a.smoke else transmix_rows(8, 224, max(n // 3, 2))
    report('transmix, ViT-S/16 training step at 224², bs 8' if not a.smoke else 'transmix (smoke)', tm, 'step with CutMix')
    rx = remix_rows(8 if a.smoke else 64, 16 if a.smoke else 32, n)
    report('remix', rx, 'MixUp.before_batch')
    rg = regmixup_rows(8 if a.smoke else 64, 16 if a.smoke else 32, n)
    report('regmixup, a training step', rg, 'no mixing')
    targets = {'saliency_map <= 2 clones': sal['saliency_map(x)'] / sal['x.clone()'] <= 2,
               "TransMix's added work <= 1 % of the step": tm["TransMix's added work alone"] / tm['step with CutMix'] <= .01,
               'Remix <= 50 µs beyond its mixer': rx['Remix(MixUp).before_batch'] - rx['MixUp.before_batch'] <= 50e-6}
    print('\ntargets:'); [print(f"  {'MET ' if ok else 'MISS'} {k}") for k, ok in targets.items()]
    if a.smoke or a.quick: return
    write_results(a.out, started, saliency=sal, transmix=tm, remix=rx, regmixup=rg, targets=targets)

if __name__ == '__main__': main()
