"""Golden outputs: every mixing function of `mixup_nbdev.functional`, on a fixed grid, gives the outputs recorded in
tools/golden.pt.

Usage: python tools/test_golden.py           recompute every case and compare with tools/golden.pt (exit 1 on a change)
       python tools/test_golden.py --write   record the current outputs in tools/golden.pt

The functions: `mixup_batch`, `cutmix_batch`, `cutmixup_batch`, `resizemix_batch`, `fmix_batch`, `saliencymix_batch` and `mixchoice_batch`
(of MixUp, CutMix and FMix, blended per sample in one pass; and of ResizeMix, CutMixUp and MixUp, its general path).
The grid: per_sample False/True (MixUp has none) x p 1/.6 x pairing 'random'/'same_class' x batch size 1/2/8 x draws
None or a `DrawAhead(block=2)`, on inputs (bs, 3, 6, 5) with class targets `arange(bs) % 3`; then,
on smaller grids of 4 samples, one-hot float targets with y_int=False, and two inputs with a segmentation mask target
(`mask_targets=True`) for the pasting methods. The batches come from a generator of their own, the same for every
case of a batch size; each case seeds `random` and torch from its key and mixes three batches in a row (with the
same `DrawAhead`, so that its blocks are sliced and refilled); every field of each `Mixed` is recorded.
Integer tensors and ints must be identical, float tensors and floats equal to rounding (rtol 1e-5, atol 1e-6; floats
rel_tol 1e-6), dtypes the same, and the structure (tuples, None, tensor or number) the same.

Regenerate with --write only when a change of the outputs is intended, and say so in CHANGELOG.md.
"""
import argparse, functools, math, random, sys, time, zlib
from functools import partial
from itertools import product
from pathlib import Path
import torch
from torch import Tensor
import torch.nn.functional as F
import mixup_nbdev.functional as mf

GOLDEN = Path(__file__).with_name('golden.pt')
METHODS = ('mixup_batch', 'cutmix_batch', 'cutmixup_batch', 'resizemix_batch', 'fmix_batch', 'saliencymix_batch')
PASTING = ('cutmix_batch', 'cutmixup_batch', 'resizemix_batch', 'fmix_batch', 'saliencymix_batch')

def _da(ahead): return mf.DrawAhead(block=2) if ahead else None

def _method(name, per_sample, p, pairing, ahead, **kw):
    "A function of the batch: `name` with these arguments (fresh draws ahead for each case)"
    f = getattr(mf, name)
    if name != 'mixup_batch': kw['per_sample'] = per_sample
    return partial(f, p=p, pairing=pairing, draws=_da(ahead), **kw)

def _choice(family, per_sample, p, pairing, ahead, **kw):
    "`mixchoice_batch` of the blending family (MixUp, CutMix, FMix) or of the general one (ResizeMix, CutMixUp, MixUp)"
    if family == 'blend': fs = (partial(mf.mixup_batch, alpha=.4, draws=_da(ahead), **kw),
                                partial(mf.cutmix_batch, per_sample=per_sample, p=p, draws=_da(ahead), **kw),
                                partial(mf.fmix_batch, per_sample=per_sample, **kw))
    else: fs = (partial(mf.resizemix_batch, per_sample=per_sample, p=p, draws=_da(ahead), **kw),
                partial(mf.cutmixup_batch, per_sample=per_sample, p=p, draws=_da(ahead), **kw),
                partial(mf.mixup_batch, alpha=.4, draws=_da(ahead), **kw))
    return lambda xb, yb: mf.mixchoice_batch(xb, yb, fs, per_sample=per_sample, pairing=pairing)

def cases():
    "Every case: key -> (function maker, batch size, kind of targets)"
    res = {}
    def add(name, kind, bs, per_sample, p, pairing, ahead, **kw):
        key = f"{name}|y={kind}|bs={bs}|per_sample={per_sample}|p={p}|pairing={pairing}|draws={'ahead' if ahead else None}"
        mk = partial(_choice, name.split(':')[1]) if name.startswith('mixchoice') else partial(_method, name)
        res[key] = (partial(mk, per_sample, p, pairing, ahead, **kw), bs, kind)
    names = METHODS + ('mixchoice_batch:blend', 'mixchoice_batch:general')
    for name, per_sample, p, pairing, bs, ahead in product(names, (False, True), (1., .6), ('random', 'same_class'), (1, 2, 8), (False, True)):
        if not (name == 'mixup_batch' and per_sample): add(name, 'class', bs, per_sample, p, pairing, ahead)
    for name, per_sample, pairing in product(names, (False, True), ('random', 'same_class')):
        if not (name == 'mixup_batch' and per_sample): add(name, 'onehot', 4, per_sample, 1., pairing, True, y_int=False)
    for name, per_sample, p in product(PASTING, (False, True), (1., .6)):
        add(name, 'mask', 4, per_sample, p, 'random', per_sample, mask_targets=True)
    return res

@functools.cache
def batches(bs, kind, n=3):
    "`n` batches (xb, yb) of `bs` samples, the same for every case, from their own generator (they draw nothing from the global streams)"
    g = torch.Generator().manual_seed(bs)
    res = []
    for _ in range(n):
        x = torch.rand(bs, 3, 6, 5, generator=g)
        y = torch.arange(bs) % 3
        if kind == 'class': res.append((x, y))
        elif kind == 'onehot': res.append((x, F.one_hot(y, 3).float()))
        else: res.append(((x, torch.rand(bs, 1, 6, 5, generator=g)), torch.randint(0, 3, (bs, 6, 5), generator=g)))
    return res

def record(o):
    "`o` as plain Python structures of tensors and numbers"
    if isinstance(o, Tensor): return o.detach().as_subclass(Tensor).clone()
    if isinstance(o, mf.Mixed): return {k: record(v) for k, v in o._asdict().items()}
    if isinstance(o, tuple): return tuple(map(record, o))
    return o  # None, a number; anything else fails `torch.load(weights_only=True)` after --write

def run_case(key, make, bs, kind):
    seed = zlib.crc32(key.encode())
    random.seed(seed); torch.manual_seed(seed)
    f = make()
    return [record(f(xb, yb)) for xb, yb in batches(bs, kind)]

def _kind(o): return 'a tensor' if isinstance(o, Tensor) else 'None' if o is None else f"a {type(o).__name__}"

def diff(a, b, path=''):
    "What differs between the recorded `a` and the current `b`, as a list of lines"
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.dtype != b.dtype or a.shape != b.shape: return [f"{path}: {a.dtype} {tuple(a.shape)} recorded, {b.dtype} {tuple(b.shape)} now"]
        if torch.is_floating_point(a):
            try: torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
            except AssertionError as e: return [f"{path}: " + '; '.join(l.strip() for l in str(e).splitlines()[1:] if l.strip())]
        elif not torch.equal(a, b): return [f"{path}: {(a != b).sum()} of {a.numel()} values differ, recorded {a.flatten()[:8].tolist()}, now {b.flatten()[:8].tolist()}"]
        return []
    if type(a) is not type(b): return [f"{path}: {_kind(a)} recorded, {_kind(b)} now"]
    if isinstance(a, dict):
        if a.keys() != b.keys(): return [f"{path}: fields {list(a)} recorded, {list(b)} now"]
        return [l for k in a for l in diff(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, (tuple, list)):
        if len(a) != len(b): return [f"{path}: {len(a)} items recorded, {len(b)} now"]
        return [l for i, (u, v) in enumerate(zip(a, b)) for l in diff(u, v, f"{path}[{i}]")]
    ok = math.isclose(a, b, rel_tol=1e-6) if isinstance(a, float) else a == b
    return [] if ok else [f"{path}: {a!r} recorded, {b!r} now"]

def walk(o, f):
    "`o` with `f` applied to each of its tensors"
    if isinstance(o, Tensor): return f(o)
    if isinstance(o, dict): return {k: walk(v, f) for k, v in o.items()}
    if isinstance(o, (tuple, list)): return type(o)(walk(v, f) for v in o)
    return o

def pack(golden):
    "`golden` with equal tensors stored once, as views of one storage per dtype: a few storages in the file, not thousands"
    key = lambda t: (t.dtype, tuple(t.shape), t.numpy().tobytes())
    uniq = {}
    walk(golden, lambda t: uniq.setdefault(key(t), t))
    bufs = {dt: torch.cat([t.flatten() for k, t in uniq.items() if k[0] == dt]) for dt in {k[0] for k in uniq}}
    offs, views = dict.fromkeys(bufs, 0), {}
    for k, t in uniq.items():
        i = offs[t.dtype]; offs[t.dtype] = i + t.numel()
        views[k] = bufs[t.dtype][i:i+t.numel()].view(t.shape)
    return walk(golden, lambda t: views[key(t)])

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--write', action='store_true', help='record the current outputs in tools/golden.pt')
    args = ap.parse_args()
    torch.set_num_threads(1)
    t = time.perf_counter()
    now, raised = {}, {}
    for k, v in cases().items():
        try: now[k] = run_case(k, *v)
        except Exception as e:
            if args.write: raise
            raised[k] = f"{type(e).__name__}: {e}"
    if args.write:
        torch.save(pack(now), GOLDEN)
        torch.load(GOLDEN, weights_only=True)  # it holds only tensors, numbers, None and containers
        print(f"golden: wrote {len(now)} cases, 3 calls each, to {GOLDEN} ({GOLDEN.stat().st_size/1e6:.2f} MB, {time.perf_counter()-t:.1f}s)")
        return 0
    golden = torch.load(GOLDEN, weights_only=True)
    problems = [f"{k}: raised {e}" for k, e in raised.items()]
    problems += [f"{k}: recorded, but no longer computed" for k in golden if k not in now and k not in raised]
    problems += [f"{k}: computed, but not recorded (run with --write if the case is new on purpose)" for k in now if k not in golden]
    problems += [f"{k}:\n    " + '\n    '.join(d[:20]) for k in now if k in golden and (d := diff(golden[k], now[k], 'call'))]
    if problems:
        for p in problems[:20]: print(f"FAIL {p}")
        if len(problems) > 20: print(f"... and {len(problems)-20} more")
        print(f"golden: {len(problems)} failures against {GOLDEN.name} ({len(now)+len(raised)} cases computed, {len(golden)} recorded)")
        return 1
    print(f"golden: {len(now)} cases, 3 calls each, as recorded ({time.perf_counter()-t:.1f}s)")
    return 0

if __name__ == '__main__': sys.exit(main())
