#!/usr/bin/env python
"""What the detection functions cost, as ratios to rows measured side by side in the same run.

Run from the repository root, in the development environment (nothing is installed or downloaded):

    python bench/bench_detection.py           # writes bench/results_detection.json (a few minutes on 2 cores)
    python bench/bench_detection.py --quick   # a short look; writes nothing
    python bench/bench_detection.py --smoke   # tiny sizes, two rounds: checks that everything runs (tools/test.sh)

Freed memory is reused for the next call (glibc's allocator set as `bench_mix.py`'s 'reuse' view sets it), as a GPU's
caching allocator does: otherwise the first touch of each new output's pages, which varies from call to call, would
weigh on the 224² rows. Every round runs each row of a group once, in a new random order, so that a change of the machine's speed hits all
alike; a figure is the median over rounds, and a ratio is that median over the median of the group's reference row.

1. boxes: 32 images of 8×8 pixels with 20 boxes each, so that the images cost next to nothing: each function applying
   a record drawn beforehand, on fastai's padded batch (`TensorBBox`, `TensorMultiCategory`) and on torchvision's list
   of dicts, and the same record applied to the images alone (`mixup_batch`, `cutmix_batch`, Mosaic's copies). The box
   work is the difference (targets: at most 0.3 ms padded, 1 ms for the list). Mosaic with a grid per image, its
   slowest case for the boxes. Those calls run back to back, with warm caches; as in training, where the model's pass
   comes between two batches, the padded box work is timed again after a clone of a 32×3×224² batch has emptied the
   caches ("caches emptied": the clone, timed alone, and the images' part subtracted).
2. images: 32×3×224×224 with 20 boxes each, everything drawn in the call: `x.clone()` (the limit row), `mixup_batch`
   and `mixup_detection`, `cutmix_batch` and `cutmix_detection` (one box per batch, and per sample), `mosaic_detection`
   with one grid per batch and per image, without resizing (target: at most 1.5 clones) and with `scale=(.5, 1.5)`,
   its images alone (the four rectangles of a grid copied, what any mosaic of the batch must write), and kornia's
   `RandomMosaic` where kornia is installed (it is not a dependency).
"""
import argparse, json, random, sys, time, warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
import importlib.util  # this clone's package where none is importable (a bare machine); else the one installed
if importlib.util.find_spec('mixup_nbdev') is None: sys.path.insert(0, str(HERE.parent))
import torch
sys.path.insert(0, str(HERE))
from bench_guided import rounds_of, report, write_results  # the same rounds, report and results file
from bench_mix import reuse_freed_memory

def batch(bs, size, n, seed=0):
    "Images and `n` boxes per image (some padding: image `i` has `n - i % 4` boxes), as torchvision's list and as fastai's padded tensors"
    from fastai.vision.all import TensorImage, TensorBBox, TensorMultiCategory
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(bs, 3, size, size, generator=g)
    lo = torch.rand(bs, n, 2, generator=g) * size * .7
    boxes = torch.cat([lo, lo + 1 + torch.rand(bs, n, 2, generator=g) * size * .3], -1).clamp(max=size)
    labels = torch.randint(1, 10, (bs, n), generator=g)
    counts = [n - i % 4 for i in range(bs)]
    targets = [dict(boxes=boxes[i, :k], labels=labels[i, :k]) for i, k in enumerate(counts)]
    valid = torch.arange(n) < torch.tensor(counts)[:, None]
    fa = (TensorBBox(torch.where(valid[..., None], boxes / (size / 2) - 1, 0.)), TensorMultiCategory(torch.where(valid, labels, 0)))
    return TensorImage(x), targets, fa

def box_rows(bs, size, n, rounds):
    from mixup_nbdev.functional import (mixup_detection, cutmix_detection, mosaic_detection, draw_mixup_detection, draw_cutmix_detection,
                                        draw_mosaic_detection, mixup_batch, cutmix_batch)
    from mixup_nbdev.detection import _place
    x, tl, fa = batch(bs, size, n)
    xp = x.as_subclass(torch.Tensor)
    torch.manual_seed(0); random.seed(0)
    rm, rc, ro = draw_mixup_detection(x, tl), draw_cutmix_detection(x, tl, per_sample=True), draw_mosaic_detection(x, tl, per_sample=True)
    rows = {}
    for name, f, r, img in (('mixup_detection', mixup_detection, rm, lambda: mixup_batch(xp, params=rm)),
                            ('cutmix_detection(per_sample=True)', cutmix_detection, rc, lambda: cutmix_batch(xp, params=rc)),
                            ('mosaic_detection(per_sample=True)', mosaic_detection, ro, lambda: _place(torch.empty_like(xp), xp, ro))):
        rows[f'{name}, padded'] = lambda f=f, r=r: f(x, fa, params=r)
        rows[f'{name}, list'] = lambda f=f, r=r: f(x, tl, params=r)
        rows[f'{name}, images alone'] = img
    res = rounds_of(rows, rounds, warmup=5, reps=20)
    # as in training, where the model's pass comes in between: the same calls with the caches emptied first, by a clone of
    # a 32x3x224x224 batch (timed alone and subtracted)
    big = torch.rand(32, 3, 224, 224) if bs == 32 else torch.rand(bs, 3, 32, 32)
    cold = {'clone of a 224² batch': lambda: big.clone()}
    for name, f, r in (('mixup_detection', mixup_detection, rm), ('cutmix_detection(per_sample=True)', cutmix_detection, rc),
                       ('mosaic_detection(per_sample=True)', mosaic_detection, ro)):
        cold[f'{name}, padded, caches emptied'] = lambda f=f, r=r: (big.clone(), f(x, fa, params=r))
    cold = rounds_of(cold, rounds)
    for k in cold:
        if k.endswith('caches emptied'): res[k.replace('padded', 'box work, padded')] = cold[k] - cold['clone of a 224² batch'] - res[k.replace(', padded, caches emptied', ', images alone')]
    for name in ('mixup_detection', 'cutmix_detection(per_sample=True)', 'mosaic_detection(per_sample=True)'):
        for kind in ('padded', 'list'): res[f'{name}, box work, {kind}'] = res[f'{name}, {kind}'] - res[f'{name}, images alone']
    return res

def image_rows(bs, size, n, rounds):
    from mixup_nbdev.functional import mixup_batch, cutmix_batch, mixup_detection, cutmix_detection, mosaic_detection
    from mixup_nbdev.detection import _place, draw_mosaic_detection
    x, tl, fa = batch(bs, size, n)
    xp, y = x.as_subclass(torch.Tensor), torch.randint(0, 10, (bs,))
    torch.manual_seed(0); random.seed(0)
    r = draw_mosaic_detection(xp, None)  # one grid for the batch: the copies any mosaic of these images makes, and nothing else
    rows = {'x.clone()': lambda: xp.clone(),
            'mixup_batch': lambda: mixup_batch(xp, y), 'mixup_detection': lambda: mixup_detection(x, fa),
            'cutmix_batch': lambda: cutmix_batch(xp, y), 'cutmix_detection': lambda: cutmix_detection(x, fa),
            'cutmix_batch(per_sample=True)': lambda: cutmix_batch(xp, y, per_sample=True),
            'cutmix_detection(per_sample=True)': lambda: cutmix_detection(x, fa, per_sample=True),
            'mosaic_detection': lambda: mosaic_detection(x, fa), 'mosaic_detection(per_sample=True)': lambda: mosaic_detection(x, fa, per_sample=True),
            'mosaic_detection(scale=(.5, 1.5))': lambda: mosaic_detection(x, fa, scale=(.5, 1.5)),
            'mosaic_detection(per_sample=True, scale=(.5, 1.5))': lambda: mosaic_detection(x, fa, per_sample=True, scale=(.5, 1.5)),
            "Mosaic's images alone (four rectangles copied)": lambda: _place(torch.empty_like(xp), xp, r)}
    try:
        import kornia.augmentation as K
        mosaic = K.RandomMosaic((size, size), mosaic_grid=(2, 2), start_ratio_range=(.25, .75), p=1., data_keys=['input', 'bbox_xyxy'])
        kb = torch.stack([torch.cat([t['boxes'], t['boxes'][:1].expand(n - len(t['boxes']), 4)]) for t in tl])
        mosaic(xp, kb)
        rows['kornia RandomMosaic'] = lambda: mosaic(xp, kb)
    except Exception as e: print(f'kornia RandomMosaic left out: {type(e).__name__}: {e}')
    return rounds_of(rows, rounds)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true'); ap.add_argument('--smoke', action='store_true')
    ap.add_argument('--out', default=str(HERE/'results_detection.json'))
    a = ap.parse_args()
    warnings.filterwarnings('ignore')
    reuse_freed_memory()  # freed memory kept for the next call, as a GPU's caching allocator does: no page faults in the figures
    n = 2 if a.smoke else 5 if a.quick else 25
    started = time.strftime('%Y-%m-%d %H:%M:%S %Z')
    bx = box_rows(32, 8, 20, n)
    report('boxes, 32 images of 8x8 with 20 boxes', bx, 'mixup_detection, images alone')
    im = image_rows(4, 32, 5, n) if a.smoke else image_rows(32, 224, 20, n)
    report('images, 32x3x224x224 with 20 boxes' if not a.smoke else 'images (smoke)', im, 'x.clone()')
    targets = {**{f'{k} <= 0.3 ms': bx[k] <= 3e-4 for k in bx if 'box work, padded' in k},
               **{f'{k} <= 1 ms': bx[k] <= 1e-3 for k in bx if 'box work, list' in k},
               'mixup_detection <= mixup_batch': im['mixup_detection'] <= im['mixup_batch'],
               'cutmix_detection <= cutmix_batch': im['cutmix_detection'] <= im['cutmix_batch'],
               'cutmix_detection(per_sample=True) <= cutmix_batch(per_sample=True)': im['cutmix_detection(per_sample=True)'] <= im['cutmix_batch(per_sample=True)'],
               'mosaic_detection <= 1.5 clones': im['mosaic_detection'] / im['x.clone()'] <= 1.5,
               'mosaic_detection(per_sample=True) <= 1.5 clones': im['mosaic_detection(per_sample=True)'] / im['x.clone()'] <= 1.5}
    print('\ntargets:'); [print(f"  {'MET ' if ok else 'MISS'} {k}") for k, ok in targets.items()]
    if a.smoke or a.quick: return
    try: import kornia; kv = kornia.__version__
    except ImportError: kv = None
    write_results(a.out, started, kornia=kv, allocator='reuse', boxes=bx, images=im, targets=targets)

if __name__ == '__main__': main()
