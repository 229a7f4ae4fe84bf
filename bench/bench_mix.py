#!/usr/bin/env python
"""Per-batch cost of MixUp and CutMix: mixup_nbdev against fastai, timm and torchvision, as a ratio to `x.clone()`;
and of our FMix, ResizeMix and per-sample MixChoice, which none of them has.

Run from the repository root, in the development environment (nothing is installed or downloaded):

    python bench/bench_mix.py            # both allocator views; writes bench/results_mix.json and .csv
    python bench/bench_mix.py --quick    # a short look; writes nothing
    python bench/bench_mix.py --smoke    # tiny batches, two rounds: checks that every candidate runs (tools/test.sh)

All candidates mix the same batch. Every round runs each candidate once, in a new random order, so machine noise
hits all alike, and seeds Python's, numpy's and torch's generators the same way before each, so candidates that draw
alike (ours: functions and callbacks) get the same λ and boxes. A figure is the median over rounds, and its ratio is
that median over the median of `x.clone()` of the same batch in the same run. Candidates that draw λ and boxes ahead
(`DrawAhead`, 32 batches at a time) pay for a block of draws in one call out of 32, which a median would never show:
their figure is the median plus their draw time during the timed rounds divided by the number of calls (the `draws`
column shows that share). Two views of memory: 'reuse' keeps freed memory for the next call, as a GPU's caching
allocator does (glibc: no mmap for large blocks, no trimming); 'default' is glibc's allocator as it comes, which
page-faults on every fresh batch-sized buffer and so hides extra passes over memory.
Each view runs in its own process, because glibc's settings must be made before torch allocates anything.

The tricks the library keeps are timed against their plain versions in the same rounds ('trick' and 'plain' rows),
each patched in the module that defines it (the script stops if it finds none): one-box CutMix's `_rotate_rows` vs
`v.copy_(v.roll(-shift, 0))`, per-sample `mixchoice_batch`'s `_blend_choice` vs each method on the whole batch and rows
picked with `torch.where`, and λ drawn with the former private `torch._sample_dirichlet` vs the public `Beta`, per batch
and from `DrawAhead`'s blocks.

The speed targets (`TARGETS`), on the time per batch with freed memory reused, apply to our rows that draw as the
callbacks do. At 64×3×224×224: within 1.15× the `limit` row of the same operation in the same run (MixUp: the lerp of
two batches; one-box CutMix: the copy of a box in place; per-sample CutMix: `where` with a mask), 1.3× for per-sample
MixChoice (`where` with a mask); at most 1.6 (MixUp), 1.0 (CutMix), 2.5 (per-sample CutMix), 3.0 (FMix), 2.75 and 7.0
(ResizeMix, one box and per sample), 3.0 (per-sample MixChoice) times `x.clone()`; and every row of ours at least as
good as the best peer's. At 256×3×32×32, for MixUp, CutMix and per-sample CutMix: at most 1.1× the best peer's time
and 0.5× fastai's.

The drop-ins (`mixup_nbdev.compat`) have groups of their own ('drop-in ...'), each row against the library it replaces
with the same settings: `compat.timm.Mixup` with timm's defaults but `num_classes` (MixUp alone, CutMix alone, and the
switch between them), in modes 'batch' and 'elem', against timm's `Mixup`, and per batch against our functional row
(the `mixup_batch`, `cutmix_batch` or `cutmixup_batch` call that draws its record and applies it to a new batch, then
`Mixed.soft_targets`); `compat.torchvision.MixUp` and `CutMix`, per batch and per sample, against torchvision's. timm's
`Mixup` mixes its input in place: in the timm groups every row mixes its own copy of the batch, made before each call
outside the timed region. The rows that switch between MixUp and CutMix per batch cost one or the other; their figure
is the mean of each method's median (`figure`). Targets (`DROPIN_TARGETS`), at both sizes: timm's per batch within
1.05× our functional row and at most 0.6× timm's; per sample no slower than timm's at 224² and at most 0.2× at 32²;
torchvision's at most 0.6× torchvision's.
"""
import argparse, ctypes, ctypes.util, json, os, platform, random, subprocess, sys, time, gc
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPES = {'224': (64, 3, 224, 224), '32': (256, 3, 32, 32)}
SMOKE_SHAPES = {'224': (8, 3, 24, 24), '32': (16, 3, 8, 8)}
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h

def reuse_freed_memory():
    "Make glibc keep freed memory for the next allocation, as a GPU's caching allocator does"
    libc = ctypes.CDLL(ctypes.util.find_library('c'))
    if not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 2**31-1)):
        raise RuntimeError("mallopt failed: is this glibc?")

# --------------------------------------------------------------------------------------------------------------------
# Host-device synchronisations, counted on the 'meta' device

def _meta_dirichlet():
    "A 'meta' kernel for the op behind `Beta.sample`, which torch lacks: it only needs the output's shape"
    import torch
    global _lib
    if '_lib' in globals(): return
    _lib = torch.library.Library('aten', 'IMPL')
    _lib.impl('_sample_dirichlet', lambda alpha, generator=None: torch.empty_like(alpha), 'Meta')

def count_syncs():
    """A context manager counting what would make the host wait for the device, for tensors on the 'meta' device:
    reading a value (`.item()`, `bool()`, `int()`, slicing with a tensor, data-dependent shapes) and copies between
    host and device. Values read back are made up (0), so the code runs on; only the count matters"""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves
    aten = torch.ops.aten
    _meta_dirichlet()
    reads = {aten._local_scalar_dense.default: lambda *a, **k: 0, aten.is_nonzero.default: lambda *a, **k: False,
             aten.nonzero.default: lambda t, **k: torch.zeros(0, t.ndim, dtype=torch.long, device=t.device),
             aten.equal.default: lambda *a, **k: True}
    # boolean-mask indexing has a data-dependent shape: pretend the mask is all False
    masked = {aten.index.Tensor: lambda t, idx: t.new_empty(0, *t.shape[sum(i.ndim if i is not None else 1 for i in idx):]),
              aten.index_put_.default: lambda t, *a, **k: t, aten.index_put.default: lambda t, *a, **k: t.clone(),
              aten.masked_select.default: lambda t, m: t.new_empty(0)}

    class SyncCounter(TorchDispatchMode):
        def __init__(self): super().__init__(); self.n, self.ops = 0, []
        def _hit(self, name): self.n += 1; self.ops.append(name)
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            devs = {t.device.type for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
            if func in reads and 'meta' in devs:
                self._hit(str(func)); return reads[func](*args, **kwargs)
            if func in masked and 'meta' in devs and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in tree_leaves(args[1:2])):
                self._hit(f'{func} with a boolean mask'); return masked[func](*args, **kwargs)
            if func is aten._to_copy.default and 'device' in kwargs and kwargs['device'] is not None:
                src, dst = args[0].device.type, torch.device(kwargs['device']).type
                if src != dst: self._hit(f'{func} {src}->{dst}')
                if dst == 'cpu' and src == 'meta':  # the values can't come back: make them up
                    return torch.zeros(args[0].shape, dtype=kwargs.get('dtype') or args[0].dtype)
            if func is aten.copy_.default and args[0].device != args[1].device: self._hit(f'{func} {args[1].device.type}->{args[0].device.type}')
            return func(*args, **kwargs)
    return SyncCounter()

def syncs_per_batch(f):
    "Count the host-device syncs of `f()`, a per-batch step on 'meta' tensors, after a first call that builds caches"
    with count_syncs(): f()  # the first call builds caches; its count is left out
    with count_syncs() as s: f()
    return s

# --------------------------------------------------------------------------------------------------------------------
# Candidates

class Cand:
    """One way of mixing a batch: `call()` mixes and returns the result; `reset()` (untimed) restores the state after it;
    `draws`, if any, is the `DrawAhead` it takes λ and boxes from; `target`: the speed targets apply to it (ours, drawing
    as the callbacks do); `kind`, for a row that picks one of two methods per batch: `kind(result)` (untimed) says which
    one it ran, and its figure is the mean of each method's median (see `figure`)"""
    def __init__(self, name, group, lib, call, reset=None, lam=None, draws=None, target=None, kind=None):
        self.name, self.group, self.lib, self.call, self.reset, self.lam = name, group, lib, call, reset or (lambda: None), lam
        self.kind = kind
        self.target = lib == 'ours' if target is None else target
        self.draws, self.draw_s, self.timing = draws, 0., False
        if draws is not None:  # time each block of draws, during the timed rounds
            refill = draws._refill
            def timed(*args):
                t0 = time.perf_counter(); refill(*args)
                if self.timing: self.draw_s += time.perf_counter() - t0
            draws._refill = timed

# --------------------------------------------------------------------------------------------------------------------
# The plain versions of the tricks the library keeps (or dropped), each timed against the trick in the same run

_concs = {}
def sample_lam_dirichlet(alpha, n, device=None, larger=False, p=1.):
    "The former `sample_lam`: the kernel behind `Beta.sample`, the private `torch._sample_dirichlet`, called directly"
    import torch
    if alpha == 1:
        lam = torch.empty(n, device=device).uniform_(.5, 1.) if larger else torch.rand(n, device=device)
    else:
        key = (alpha, n, str(device))
        if key not in _concs: _concs[key] = torch.full((n, 2), float(alpha), device=device)
        d = torch._sample_dirichlet(_concs[key])  # rows of (λ, 1-λ)
        lam = d.amax(1) if larger else d[:, 0]
    return torch.where(torch.rand(n, device=device) < p, lam, 1.) if p < 1 else lam

def rotate_rows_roll(t, shift, max_copies=None):
    "The plain `_rotate_rows`: the rolled box written to a new tensor, then copied back"
    return t.copy_(t.roll(-shift, 0))

def defining_module(name, mods=('mixup_nbdev.blend', 'mixup_nbdev.paste', 'mixup_nbdev.choice', 'mixup_nbdev.loss', 'mixup_nbdev.functional')):
    """The module of `mods` that defines the private function `name`: its callers read it from that module's globals, so
    that is where a patch must go (since `functional` was split into modules, one of them; before, `functional` itself)"""
    import importlib, importlib.util
    pkg = [Path(d).resolve() for d in importlib.import_module('mixup_nbdev').__path__]
    for m in mods:  # only the package imported: an editable install's finder would find a module a copy lacks in the clone
        spec = importlib.util.find_spec(m)
        if spec is None or Path(spec.origin).resolve().parent not in pkg: continue
        mod = importlib.import_module(m)
        if getattr(getattr(mod, name, None), '__module__', None) == m: return mod
    sys.exit(f"bench: {name} is defined in none of {', '.join(mods)}: its trick rows would measure nothing; update the benchmark")

def patched(mod, name, value, f):
    "`f` that runs with `mod.name` set to `value` (both rows of a pair go through this, so the patch costs both the same)"
    def call():
        old = getattr(mod, name); setattr(mod, name, value)
        try: return f()
        finally: setattr(mod, name, old)
    return call

TRICK_GROUPS = ('trick: _rotate_rows', 'trick: _sample_dirichlet', 'trick: _blend_choice')

# The drop-ins (`mixup_nbdev.compat`): timm's `Mixup` with timm's defaults but `num_classes` (MixUp alone; the switch
# between MixUp and CutMix; CutMix alone), and torchvision's `v2.MixUp` and `v2.CutMix` as in the `v2` rows
DROPIN_TIMM = {'drop-in timm: MixUp': {}, 'drop-in timm: CutMix': dict(mixup_alpha=0., cutmix_alpha=1.),
               'drop-in timm: MixUp or CutMix': dict(cutmix_alpha=1.)}
DROPIN_TV = ('drop-in torchvision: MixUp', 'drop-in torchvision: CutMix')
# our functional row of each timm group: the closest row of the method above (`mixup_batch`, drawing for this batch;
# `cutmix_batch` and `cutmixup_batch` returning a new batch, as the drop-in does), with timm's alpha, plus soft targets
FUNCTIONAL = {'drop-in timm: MixUp': 'mixup_batch(alpha=1) + soft_targets',
              'drop-in timm: CutMix': 'cutmix_batch (new batch) + soft_targets',
              'drop-in timm: MixUp or CutMix': 'cutmixup_batch(1, 1) + soft_targets'}

def which_method(src):
    "`kind` of a row that switches per batch: 'CutMix' if its first sample kept a value of `src` (the batch it mixed)"
    return lambda res: 'CutMix' if bool((res[0][0] == src[0]).any()) else 'MixUp'

def dropins(x, y, nc, tv_mixup, tv_cutmix):
    """The drop-ins' rows: per timm group, our functional row, `compat.timm.Mixup` and timm's `Mixup` in modes 'batch'
    and 'elem'; per torchvision group, `compat.torchvision`'s transform per batch and per sample, and torchvision's.
    timm's `Mixup` mixes its input in place: in the timm groups every row mixes its own copy of the batch, which `reset`
    makes again before each call (untimed), so each call gets an unmixed batch, and none pays for the copy"""
    import torch
    from timm.data import Mixup as TimmMixup
    from mixup_nbdev.functional import mixup_batch, cutmix_batch, cutmixup_batch
    from mixup_nbdev.compat import timm as compat_timm, torchvision as compat_tv
    def fresh(f, switch=False):
        "A row that mixes `buf`, a copy of `x` made again by `reset`"
        buf = torch.empty_like(x)
        return dict(call=lambda: f(buf), reset=lambda: buf.copy_(x), kind=which_method(x) if switch else None)
    def soft(m): return m.xb[0], m.soft_targets(nc, .1)
    functional = {'drop-in timm: MixUp': lambda b: soft(mixup_batch(b, y, 1.)),
                  'drop-in timm: CutMix': lambda b: soft(cutmix_batch(b, y, 1.)),
                  'drop-in timm: MixUp or CutMix': lambda b: soft(cutmixup_batch(b, y, 1., 1.))}
    cands = []
    for g, kw in DROPIN_TIMM.items():
        switch = len(kw) == 1
        cands += [Cand(FUNCTIONAL[g], g, 'ours', target=False, **fresh(functional[g], switch))]
        for mode in ('batch', 'elem'):
            ours = compat_timm.Mixup(num_classes=nc, mode=mode, **kw)
            theirs = TimmMixup(num_classes=nc, mode=mode, **kw)
            sw = switch and mode == 'batch'
            cands += [Cand(f"compat.timm.Mixup {mode}", g, 'ours', target=False,
                           **fresh(lambda b, m=ours: m(b, y), sw)),
                      Cand(f"Mixup {mode} (in place)", g, 'timm', **fresh(lambda b, m=theirs: m(b, y), sw))]
    for g, T, tv in zip(DROPIN_TV, (compat_tv.MixUp, compat_tv.CutMix), (tv_mixup, tv_cutmix)):
        for per_sample in (False, True):
            t = T(alpha=tv.alpha, num_classes=nc, per_sample=per_sample)
            name = f"compat.torchvision.{T.__name__}" + (' per_sample' if per_sample else '')
            cands.append(Cand(name, g, 'ours', lambda t=t: t(x, y), target=False))
        cands.append(Cand(f"v2.{T.__name__}", g, 'torchvision', lambda tv=tv: tv(x, y)))
    return cands

def candidates(shape, device='cpu'):
    "Every candidate, on a batch of `shape`: references, then MixUp, one-box CutMix and per-sample CutMix, then each trick and its plain version"
    import torch, warnings
    warnings.filterwarnings('ignore')
    from fastai.vision.all import TensorImage, TensorCategory, Learner, DataLoaders, DataLoader, CrossEntropyLossFlat, nn
    import fastai.callback.mixup as fa
    from timm.data import Mixup as TimmMixup
    from torchvision.transforms import v2
    from mixup_nbdev.functional import mixup_batch, cutmix_batch, mixchoice_batch, resizemix_batch, fmix_batch, rand_box, rand_boxes, sample_lam, DrawAhead
    from mixup_nbdev.mixup import MixUp, CutMix, ResizeMix, FMix, MixChoice
    from functools import partial

    if device == 'meta': _meta_dirichlet()
    bs, nc, size = shape[0], 10, shape[2:]
    torch.manual_seed(0)
    x = torch.randn(shape, device=device)
    y = torch.randint(0, nc, (bs,), device=device)
    x2, w = torch.randn(shape, device=device), torch.rand(bs, 1, 1, 1, device=device)
    xi, yi = TensorImage(x), TensorCategory(y)  # fastai's types, sharing `x`'s memory
    box = [None]
    def new_box(): box[0] = (...,) + rand_box(size, random.betavariate(1., 1.))
    mask = rand_boxes(size, sample_lam(1., bs, device))[0][:, None]

    def on_learner(cb, fastai_cb):
        learn = Learner(DataLoaders(DataLoader([]), DataLoader([])), nn.Linear(1, 1), loss_func=CrossEntropyLossFlat(), cbs=cb)
        learn.training, learn.epoch, learn.pct_train, learn.iter = True, 0, 0., 0
        learn.xb, learn.yb = (xi,), (yi,)
        cb.before_train() if fastai_cb else cb.before_fit()
        def call(): cb.before_batch(); return learn.xb
        def reset(): learn.xb, learn.yb = (xi,), (yi,)
        draws = None if fastai_cb else getattr(cb, '_draws', None) or getattr(cb, 'draws', None)
        return dict(call=call, reset=reset, lam=lambda: cb.lam, draws=draws)

    def timm(**kw):
        mix = TimmMixup(num_classes=nc, label_smoothing=0., **kw)
        return lambda: mix(x, y)

    tv_mixup, tv_cutmix = v2.MixUp(alpha=.4, num_classes=nc), v2.CutMix(alpha=1., num_classes=nc)
    last = {}
    def keep(m): last['lam'] = m.lam; return m
    mu_draws, ps_draws, rs_draws = DrawAhead(), DrawAhead(), DrawAhead()
    def choice_fs():
        "The functions the MixChoice callback gives `mixchoice_batch`, with their own draws made ahead"
        return (partial(mixup_batch, alpha=.4, draws=DrawAhead()), partial(cutmix_batch, alpha=1., per_sample=True, draws=DrawAhead()))
    mc_fs, mc_fs_t, mc_fs_p = choice_fs(), choice_fs(), choice_fs()
    R, M, C, S = 'reference', 'MixUp', 'CutMix', 'CutMix per sample'
    FM, RM, RS, MC = 'FMix', 'ResizeMix', 'ResizeMix per sample', 'MixChoice per sample'
    TR, TS, TB = TRICK_GROUPS
    def via(name, value, cb_or_f):
        "A callback's (dict from `on_learner`) or a function's call, with `name` set to `value` in the module that defines it"
        kw = cb_or_f if isinstance(cb_or_f, dict) else dict(call=cb_or_f)
        return {**kw, 'call': patched(defining_module(name), name, value, kw['call'])}
    rotate, blend = (getattr(defining_module(n), n) for n in ('_rotate_rows', '_blend_choice'))
    lam_draws, lam_draws_dir = DrawAhead(), DrawAhead()
    cands = [
        Cand('x.clone()', R, 'torch', lambda: x.clone()),
        Cand('limit: lerp of two batches', R, 'torch', lambda: torch.lerp(x, x2, w)),
        Cand('limit: copy a box in place', R, 'torch', lambda: x[box[0]].copy_(x2[box[0]]), reset=new_box),
        Cand('limit: where with a mask', R, 'torch', lambda: torch.where(mask, x2, x)),
        Cand('mixup_batch', M, 'ours', lambda: mixup_batch(x, y, .4), target=False),
        Cand('mixup_batch(draws=DrawAhead())', M, 'ours', lambda: mixup_batch(x, y, .4, draws=mu_draws), draws=mu_draws),
        Cand('MixUp callback', M, 'ours', **on_learner(MixUp(.4), False)),
        Cand('MixUp callback', M, 'fastai', **on_learner(fa.MixUp(.4), True)),
        Cand('Mixup batch (in place)', M, 'timm', timm(mixup_alpha=.4, cutmix_alpha=0., mode='batch')),
        Cand('Mixup elem', M, 'timm', timm(mixup_alpha=.4, cutmix_alpha=0., mode='elem')),
        Cand('v2.MixUp', M, 'torchvision', lambda: tv_mixup(x, y)),
        Cand('cutmix_batch (in place)', C, 'ours', lambda: keep(cutmix_batch(x, y, 1., inplace=True)), lam=lambda: last['lam']),
        Cand('CutMix callback', C, 'ours', **on_learner(CutMix(1.), False)),
        Cand('CutMix callback', C, 'fastai', **on_learner(fa.CutMix(1.), True)),
        Cand('Mixup cutmix batch (in place)', C, 'timm', timm(mixup_alpha=0., cutmix_alpha=1., mode='batch')),
        Cand('v2.CutMix', C, 'torchvision', lambda: tv_cutmix(x, y)),
        Cand('cutmix_batch per_sample', S, 'ours', lambda: cutmix_batch(x, y, 1., per_sample=True), target=False),
        Cand('cutmix_batch per_sample, draws', S, 'ours', lambda: cutmix_batch(x, y, 1., per_sample=True, draws=ps_draws), draws=ps_draws),
        Cand('CutMix(per_sample=True) callback', S, 'ours', **on_learner(CutMix(1., per_sample=True), False)),
        Cand('Mixup cutmix elem', S, 'timm', timm(mixup_alpha=0., cutmix_alpha=1., mode='elem')),
        # the newer methods: no peer installed here has them
        Cand('fmix_batch', FM, 'ours', lambda: fmix_batch(x, y), target=False),
        Cand('FMix callback', FM, 'ours', **on_learner(FMix(), False)),
        Cand('resizemix_batch (in place)', RM, 'ours', lambda: keep(resizemix_batch(x, y, inplace=True)), lam=lambda: last['lam']),
        Cand('ResizeMix callback', RM, 'ours', **on_learner(ResizeMix(), False)),
        Cand('resizemix_batch per_sample, draws', RS, 'ours', lambda: resizemix_batch(x, y, per_sample=True, draws=rs_draws), draws=rs_draws),
        Cand('ResizeMix(per_sample=True) callback', RS, 'ours', **on_learner(ResizeMix(per_sample=True), False)),
        Cand('mixchoice_batch(MixUp, CutMix) per_sample, draws', MC, 'ours', lambda: mixchoice_batch(x, y, mc_fs, per_sample=True)),
        Cand('MixChoice(MixUp, CutMix, per_sample=True) callback', MC, 'ours', **on_learner(MixChoice(MixUp(.4), CutMix(1.), per_sample=True), False)),
    ]
    cands += dropins(x, y, nc, tv_mixup, tv_cutmix)
    # the tricks, each against its plain version, on the path it is on (a trick the library drops must leave this list too)
    cands += [
        Cand('cutmix_batch (in place), _rotate_rows', TR, 'trick', lam=lambda: last['lam'], **via('_rotate_rows', rotate, lambda: keep(cutmix_batch(x, y, 1., inplace=True)))),
        Cand('cutmix_batch (in place), copy_(roll)', TR, 'plain', lam=lambda: last['lam'], **via('_rotate_rows', rotate_rows_roll, lambda: keep(cutmix_batch(x, y, 1., inplace=True))))]
    cands += [
        Cand('sample_lam per batch, _sample_dirichlet', TS, 'trick', lambda: sample_lam_dirichlet(.4, bs, device, larger=True)),
        Cand('sample_lam per batch, Beta', TS, 'plain', lambda: sample_lam(.4, bs, device, larger=True)),
        Cand('sample_lam, DrawAhead, _sample_dirichlet', TS, 'trick', lambda: lam_draws_dir(sample_lam_dirichlet, bs, .4, device=device, larger=True), draws=lam_draws_dir),
        Cand('sample_lam, DrawAhead, Beta', TS, 'plain', lambda: lam_draws(sample_lam, bs, .4, device=device, larger=True), draws=lam_draws)]
    cands += [  # per-sample MixChoice in one blend, against each method on the whole batch and rows picked
        Cand('mixchoice_batch per_sample, _blend_choice', TB, 'trick', **via('_blend_choice', blend, lambda: mixchoice_batch(x, y, mc_fs_t, per_sample=True))),
        Cand('mixchoice_batch per_sample, each method and torch.where', TB, 'plain', **via('_blend_choice', lambda *a: None, lambda: mixchoice_batch(x, y, mc_fs_p, per_sample=True)))]
    return cands, x

# --------------------------------------------------------------------------------------------------------------------
# Measurements

def seed(r):
    "Seed every random generator the candidates use"
    import torch, numpy as np
    random.seed(r); np.random.seed(r); torch.manual_seed(r)

def time_all(cands, x, rounds, warmup=3):
    "Seconds per call of each candidate, interleaved in a new random order every round, sorted"
    x0 = x.clone()
    times = {id(c): [] for c in cands}
    for c in cands: c.by_kind = {}
    order = list(cands)
    shuffle = random.Random(0).shuffle
    gc.disable()
    try:
        for r in range(warmup + rounds):
            for c in cands: c.timing = r >= warmup
            shuffle(order)
            x.copy_(x0)  # in-place mixers have changed it: keep the values ordinary
            for c in order:
                # the same seed for all in a round: the same λ, shift and box sizes, where libraries draw alike
                seed(r); c.reset()
                t0 = time.perf_counter(); res = c.call(); t1 = time.perf_counter()
                if c.kind and r >= warmup: c.by_kind.setdefault(c.kind(res), []).append(t1 - t0)  # which method it ran
                del res; c.reset()
                if r >= warmup: times[id(c)].append(t1 - t0)
            gc.collect()
    finally:
        gc.enable()
        for c in cands: c.timing = False
    return {id(c): sorted(times[id(c)]) for c in cands}

def quantile(ts, q): return ts[min(len(ts)-1, int(q*len(ts)))]

def figure(c, ts, least=5):
    """Seconds per call of `c` from its sorted times `ts`: their median; for a row that picks one of two methods per
    batch with chance 1/2 (`kind`), the mean of each method's median, what it costs on average: the median of the two
    methods' mixture would land on either (with fewer than `least` rounds of a method: the median)"""
    ks = getattr(c, 'by_kind', None) or {}
    if len(ks) < 2 or min(map(len, ks.values())) < least: return ts[len(ts)//2]
    return sum(quantile(sorted(v), .5) for v in ks.values()) / len(ks)

def peak_memory(c, calls=5):
    """Peak bytes allocated and not yet freed during each of `calls` calls, the result included, by torch's memory
    profiler; with λ. Call `i` is seeded with `i`, as in `time_all`: candidates that draw alike (a trick and its plain
    version) are measured on the same boxes and partners"""
    from torch.profiler import profile, ProfilerActivity
    out = []
    if c.draws is not None: c.draws.reset()  # a fresh block of draws now, so that none is drawn in the calls measured
    for i in range(calls):
        c.reset(); c.call(); c.reset()  # warm-up: caches built on the first call are not per-batch memory
        seed(i); c.reset()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
            res = c.call()
        cur = peak = 0
        for _, action, _, size in prof._memory_profile().timeline:
            if action.name == 'CREATE': cur += size
            elif action.name == 'DESTROY': cur -= size
            peak = max(peak, cur)
        lam = c.lam() if c.lam else None
        del res; c.reset()
        out.append((peak, None if lam is None else float(lam) if not hasattr(lam, 'numel') or lam.numel() == 1 else None))
    return out

def syncs(shape):
    "Host-device synchronisations of each candidate's second call, on a 'meta' batch"
    import torch
    res = {}
    for c in candidates(shape, 'meta')[0]:
        try:
            def step(): c.reset(); c.call()
            s = syncs_per_batch(step)
            res[(c.group, c.lib, c.name)] = dict(n=s.n, ops=sorted(set(s.ops)))
        except Exception as e: res[(c.group, c.lib, c.name)] = dict(n=None, error=f'{type(e).__name__}: {str(e)[:120]}')
        c.reset()
    return res

def machine():
    "What the numbers came from"
    import torch, fastai, timm, torchvision
    cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), platform.processor())
    return dict(cpu=cpu, cores=os.cpu_count(), torch_threads=torch.get_num_threads(), python=platform.python_version(),
                os=platform.platform(), libc=' '.join(platform.libc_ver()), torch=torch.__version__, fastai=fastai.__version__,
                timm=timm.__version__, torchvision=torchvision.__version__, mem_gib=round(os.sysconf('SC_PAGE_SIZE')*os.sysconf('SC_PHYS_PAGES')/2**30, 1))

def library_version():
    "The commit of the repository, and a hash of the library's source, so that a run tells which code it measured"
    import hashlib, importlib.util
    pkg = Path(importlib.util.find_spec('mixup_nbdev').origin).parent  # the package imported: this clone's, or a copy on PYTHONPATH
    stamp = pkg.parent/'COMMIT'  # a copy made with `git archive` says which commit it is
    try: commit = stamp.read_text().strip() if stamp.exists() else subprocess.run(
        ['git', 'rev-parse', '--short', 'HEAD'], cwd=pkg, capture_output=True, text=True).stdout.strip()
    except OSError: commit = ''
    src = hashlib.sha1(b''.join(p.read_bytes() for p in sorted(pkg.rglob('*.py')))).hexdigest()[:12]  # subpackages too
    return dict(commit=commit, source_sha1=src, path=str(pkg))

def child(view, rounds, out, mem, smoke=False, threads=None):
    "One allocator view: times (and, for 'reuse', memory and syncs) as JSON in `out`"
    if view == 'reuse': reuse_freed_memory()
    import torch
    if threads: torch.set_num_threads(threads)
    load = [os.getloadavg()]
    rows = []
    for key, shape in (SMOKE_SHAPES if smoke else SHAPES).items():
        cands, x = candidates(shape)
        ts = time_all(cands, x, rounds[key])
        nbytes = x.numel() * x.element_size()
        clone = ts[id(cands[0])][len(ts[id(cands[0])])//2]
        for c in cands:
            t = ts[id(c)]; share = c.draw_s / len(t)  # each call's share of the blocks of draws made in the timed rounds
            med = figure(c, t) + share
            row = dict(view=view, shape=key, group=c.group, lib=c.lib, name=c.name, target=c.target, median_ms=med*1e3, draws_ms=share*1e3,
                       q1_ms=quantile(t, .25)*1e3, q3_ms=quantile(t, .75)*1e3, ratio=med/clone, n=len(t), batch_mib=nbytes/2**20)
            if c.by_kind:  # a row that switches: each method's rounds and median
                row['kinds'] = {k: dict(n=len(v), median_ms=quantile(sorted(v), .5)*1e3)
                                for k, v in sorted(c.by_kind.items())}
            if mem:
                pk = peak_memory(c)
                row.update(peak_batches=max(p for p,_ in pk)/nbytes, peak_mib=max(p for p,_ in pk)/2**20, mask_batches=1/(shape[1]*x.element_size()),
                           peak_minus_box_batches=max((p/nbytes - (1-l)) if l is not None else float('nan') for p,l in pk),
                           draws_mib=sum(b.numel()*b.element_size() for b in c.draws.buf)/2**20 if c.draws is not None else 0.)
            rows.append(row)
        load.append(os.getloadavg())
    res = dict(view=view, rows=rows, load=load, machine=machine())
    if mem: res['syncs'] = [dict(group=g, lib=l, name=n, **v) for (g,l,n),v in syncs((SMOKE_SHAPES if smoke else SHAPES)['32']).items()]
    Path(out).write_text(json.dumps(res))

# --------------------------------------------------------------------------------------------------------------------
# Targets and the table

# (group, size, reference, k): the time per batch (median_ms) of each of our rows with `target` (drawing as the callbacks
# do) in `group` is at most k times the reference's in the same run, with freed memory reused. The reference: a row of
# the 'reference' group by name (`x.clone()`, or the `limit` of the same operation), 'best peer' (the fastest of
# PEERS' rows in `group`), or a peer's row in `group`
PEERS = ('fastai', 'timm', 'torchvision')
LERP, BOX, WHERE, CLONE = 'limit: lerp of two batches', 'limit: copy a box in place', 'limit: where with a mask', 'x.clone()'
TARGETS = [('MixUp', '224', LERP, 1.15), ('CutMix', '224', BOX, 1.15), ('CutMix per sample', '224', WHERE, 1.15),
           ('MixChoice per sample', '224', WHERE, 1.3),
           ('MixUp', '224', CLONE, 1.6), ('CutMix', '224', CLONE, 1.0), ('CutMix per sample', '224', CLONE, 2.5),
           ('FMix', '224', CLONE, 3.0), ('ResizeMix', '224', CLONE, 2.75), ('ResizeMix per sample', '224', CLONE, 7.0),
           ('MixChoice per sample', '224', CLONE, 3.0),
           *[(g, '32', 'best peer', 1.1) for g in ('MixUp', 'CutMix', 'CutMix per sample')],
           ('MixUp', '32', 'fastai', .5), ('CutMix', '32', 'fastai', .5)]
# The drop-ins': (group, size, our row, (library, name) of the reference row in the group, k): our row's time per batch
# at most k times the reference's. timm's: per batch, within 1.05× our functional row and at most 0.6× timm's; per
# sample ('elem'), no slower than timm's at 224² and at most 0.2× at 32². torchvision's: at most 0.6× torchvision's
DROPIN_TARGETS = [
    *[(g, s, 'compat.timm.Mixup batch', ref, k) for g in DROPIN_TIMM for s in SHAPES
      for ref, k in ((('ours', FUNCTIONAL[g]), 1.05), (('timm', 'Mixup batch (in place)'), .6))],
    *[(g, s, 'compat.timm.Mixup elem', ('timm', 'Mixup elem (in place)'), k) for g in DROPIN_TIMM
      for s, k in (('224', 1.), ('32', .2))],
    *[(g, s, f'compat.torchvision.{m}{ps}', ('torchvision', f'v2.{m}'), .6)
      for g, m in zip(DROPIN_TV, ('MixUp', 'CutMix')) for s in SHAPES for ps in ('', ' per_sample')]]
BEST_PEER = ('224',)  # sizes where every row of ours, those drawing per batch included, is at least as good as the best peer's

def check_targets(rows, syncs_):
    "Each target with the measured figure and whether it is met"
    out = []
    reuse = [r for r in rows if r['view'] == 'reuse']
    for g, s, ref, k in TARGETS:
        rs, libs = [r for r in reuse if r['shape'] == s], PEERS if ref == 'best peer' else (ref,)
        refs = [r for r in rs if r['group'] == 'reference' and r['name'] == ref or r['group'] == g and r['lib'] in libs]
        ours = [r for r in rs if r['group'] == g and r['lib'] == 'ours' and r.get('target', True)]
        if not (refs and ours): raise ValueError(f"target {g} {s}² against {ref}: no row of ours or no reference in the results")
        best = min(refs, key=lambda r: r['median_ms'])
        peer = '' if best['group'] == 'reference' else f"{best['lib']} {best['name']}: "
        for r in ours:
            v = r['median_ms'] / best['median_ms']
            out.append(dict(target=f"{g} {s}²: {r['name']} ≤ {k}× {ref}", value=round(v, 2), ok=v <= k,
                            **({} if ref == CLONE else dict(detail=f"{peer}{best['median_ms']:.3f} ms"))))
    for g, s, name, (lib, ref), k in DROPIN_TARGETS:
        pick = lambda l, n: [r for r in reuse if (r['group'], r['shape'], r['lib'], r['name']) == (g, s, l, n)]
        o, b = pick('ours', name), pick(lib, ref)
        if not (o and b): raise ValueError(f"drop-in target {g} {s}²: no row {name!r} or {lib} {ref!r} in the results")
        v = o[0]['median_ms'] / b[0]['median_ms']
        out.append(dict(target=f"{g} {s}²: {name} ≤ {k}× {lib} {ref}", value=round(v, 2), ok=v <= k,
                        detail=f"{o[0]['median_ms']:.3f} / {b[0]['median_ms']:.3f} ms"))
    for g in dict.fromkeys(g for g, *_ in TARGETS):
        for s in BEST_PEER:
            peers = [r for r in reuse if r['group'] == g and r['shape'] == s and r['lib'] in PEERS]
            if not peers: continue
            best = min(peers, key=lambda r: r['ratio'])
            ours = max(r['ratio'] for r in reuse if r['group'] == g and r['shape'] == s and r['lib'] == 'ours')
            out.append(dict(target=f"{g} {s}²: ours (slowest row) ≤ best peer", value=round(ours, 2), ok=ours <= best['ratio'],
                            detail=f"{best['lib']} {best['name']}: {best['ratio']:.2f}"))
    for r in reuse:
        if r['lib'] != 'ours' or 'peak_batches' not in r: continue
        if r['group'] == 'CutMix':
            v = r['peak_minus_box_batches']
            out.append(dict(target=f"memory {r['shape']}²: {r['name']} peak ≤ its box (+0.01 batch)", value=round(v, 4), ok=v <= .01))
        elif r['group'] == 'MixUp':
            v = r['peak_batches']
            out.append(dict(target=f"memory {r['shape']}²: {r['name']} peak ≤ 1 batch (+0.01)", value=round(v, 4), ok=v <= 1.01))
        elif r['group'] == 'CutMix per sample':  # a new batch, and its mask: a byte per pixel
            v = r['peak_batches']
            out.append(dict(target=f"memory {r['shape']}²: {r['name']} peak ≤ 1 batch + mask ({1+r['mask_batches']:.3f}) (+0.01)",
                            value=round(v, 4), ok=v <= 1.01 + r['mask_batches']))
    for s in syncs_:
        if s['lib'] == 'ours': out.append(dict(target=f"syncs: {s['name']} = 0", value=s['n'], ok=s['n'] == 0))
    return out

def tricks(rows):
    "Each trick against its plain version, per shape: medians as ratios to x.clone(), the plain one's over the trick's"
    out = []
    reuse = [r for r in rows if r['view'] == 'reuse']
    for g in TRICK_GROUPS:
        for s in dict.fromkeys(r['shape'] for r in reuse):
            rs = [r for r in reuse if r['group'] == g and r['shape'] == s]
            for t, p in zip([r for r in rs if r['lib'] == 'trick'], [r for r in rs if r['lib'] == 'plain']):
                out.append(dict(trick=g[len('trick: '):], shape=s, trick_row=t['name'], plain_row=p['name'], trick_ratio=t['ratio'],
                                plain_ratio=p['ratio'], trick_ms=t['median_ms'], plain_ms=p['median_ms'], plain_over_trick=p['median_ms']/t['median_ms'],
                                trick_peak_batches=t.get('peak_batches'), plain_peak_batches=p.get('peak_batches')))
    return out

def table(rows, view):
    "The results of one view, as text"
    lines = [f"view: {view}   (median per-batch ms, with its share of draws made ahead, and ratio to x.clone() of the same batch)",
             f"{'group':<30}{'library':<12}{'candidate':<42}"
             + ''.join(f"{s+'² ms':>10}{'draws':>7}{'×clone':>8}" for s in SHAPES)]
    rs = [r for r in rows if r['view'] == view]
    keys = list(dict.fromkeys((r['group'], r['lib'], r['name']) for r in rs))
    for k in keys:
        line = f"{k[0]:<30}{k[1]:<12}{k[2]:<42}"
        for s in SHAPES:
            r = next(r for r in rs if (r['group'], r['lib'], r['name']) == k and r['shape'] == s)
            line += f"{r['median_ms']:>10.3f}" + (f"{r['draws_ms']:>7.3f}" if r.get('draws_ms') else ' '*7) + f"{r['ratio']:>8.2f}"
        lines.append(line)
    return '\n'.join(lines)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='a few rounds, to look; writes nothing')
    ap.add_argument('--smoke', action='store_true', help='tiny batches, two rounds, one view: checks that everything runs; writes nothing')
    ap.add_argument('--rounds', type=int, default=40, help='rounds at 224² (32² runs 5 times as many)')
    ap.add_argument('--views', default='reuse,default', help='allocator views to run, in order')
    ap.add_argument('--out', default=str(HERE/'results_mix'), help='results path without extension (.json, .csv)')
    ap.add_argument('--skip-mem', action='store_true', help='times only: no peak memory or sync counts (the same in every run), for a repeat run')
    ap.add_argument('--threads', type=int, help="torch's threads (default: torch's own choice, one per core); 1 on a machine other jobs keep busy")
    ap.add_argument('--child', help=argparse.SUPPRESS)
    ap.add_argument('--child-out', help=argparse.SUPPRESS)
    ap.add_argument('--mem', action='store_true', help=argparse.SUPPRESS)
    a = ap.parse_args()
    rounds = 2 if a.smoke else 6 if a.quick else a.rounds
    if a.smoke: a.views = 'reuse'
    if a.child: return child(a.child, {'224': rounds, '32': 5*rounds}, a.child_out, a.mem, a.smoke, a.threads)
    import tempfile
    started, results = time.strftime('%Y-%m-%d %H:%M:%S %Z'), []
    load0, lib0 = os.getloadavg(), library_version()
    if load0[0] > 1 and not a.smoke and a.threads != 1: print(
        f"warning: load average {load0[0]:.1f} on {os.cpu_count()} cores. With other jobs running, an operation split over several "
        "threads waits for each of them to be scheduled, which can make a 0.2 ms copy take 15 ms: use --threads 1, or an idle machine", flush=True)
    for i, view in enumerate(a.views.split(',')):
        with tempfile.NamedTemporaryFile(suffix='.json') as f:
            cmd = [sys.executable, __file__, '--child', view, '--child-out', f.name, '--rounds', str(rounds)] + (['--mem'] if i == 0 and not a.skip_mem else []) + (['--smoke'] if a.smoke else []) + (['--threads', str(a.threads)] if a.threads else [])
            subprocess.run(cmd, check=True)
            results.append(json.loads(Path(f.name).read_text()))
    rows = [r for res in results for r in res['rows']]
    first = results[0]
    if library_version() != lib0: sys.exit("the library's source changed during the run: its figures mix two versions; run it again")
    syncs_ = first.get('syncs', [])
    targets = check_targets(rows, syncs_)
    for res in results: print(table(rows, res['view']), '\n')
    print('host-device syncs per batch (counted on the meta device):')
    for s in syncs_:
        print(f"  {s['group']:<30}{s['lib']:<12}{s['name']:<42}{s['n'] if s['n'] is not None else s['error']}")
    print('\ntargets (reuse view):')
    for t in targets: print(f"  {'PASS' if t['ok'] else 'FAIL'}  {t['target']}: {t['value']}" + (f" ({t['detail']})" if 'detail' in t else ''))
    tr = tricks(rows)
    print('\neach trick against its plain version (reuse view; ratios to x.clone(); plain/trick > 1: the trick is faster):')
    for t in tr: print(f"  {t['trick']:<18}{t['shape']+'²':<6}trick {t['trick_ratio']:>7.3f}   plain {t['plain_ratio']:>7.3f}   plain/trick {t['plain_over_trick']:>6.3f}")
    load = [load0] + [l for res in results for l in res['load']]
    print(f"\nload average (1 min) during the run: {min(l[0] for l in load):.2f} to {max(l[0] for l in load):.2f}")
    if a.smoke:
        n = len(candidates(SMOKE_SHAPES['32'])[0])
        ok = len(rows) == 2*n and len(syncs_) == n and all(s['n'] is not None for s in syncs_ if s['lib'] == 'ours') and len(targets) > 20 and {t['trick'] for t in tr} == {g[len('trick: '):] for g in TRICK_GROUPS} and len(tr) == len([c for c in candidates(SMOKE_SHAPES['32'])[0] if c.lib == 'trick'])*2
        print('smoke run:', 'every candidate ran' if ok else 'something is missing'); sys.exit(0 if ok else 1)
    if a.quick: return
    out = dict(command='python bench/bench_mix.py' + (f' --rounds {a.rounds}' if a.rounds != 40 else '') + (f' --threads {a.threads}' if a.threads else '')
               + (' --skip-mem' if a.skip_mem else '') + (f' --out {os.path.relpath(a.out)}' if a.out != str(HERE/'results_mix') else ''), started=started,
               library=lib0, machine=first.get('machine'), load_1min=[l[0] for l in load], rounds={'224': rounds, '32': 5*rounds},
               rows=rows, syncs=syncs_, targets=targets, tricks=tr)
    Path(a.out + '.json').write_text(json.dumps(out, indent=1, ensure_ascii=False))
    cols = ['view', 'shape', 'group', 'lib', 'name', 'target', 'median_ms', 'q1_ms', 'q3_ms', 'ratio', 'n', 'peak_mib', 'peak_batches']
    Path(a.out + '.csv').write_text('\n'.join([','.join(cols)] + [','.join(
        (f'{r[c]:.4f}' if isinstance(r.get(c), float) else f'"{r[c]}"' if isinstance(r.get(c), str) else str(r.get(c, ''))) for c in cols) for r in rows]) + '\n')
    print(f"wrote {a.out}.json and {a.out}.csv")

if __name__ == '__main__': main()
