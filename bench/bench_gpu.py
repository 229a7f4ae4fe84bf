#!/usr/bin/env python
"""On a CUDA GPU: that our per-batch paths never make the host wait for the device, and what each candidate of
`bench_mix.py` costs per batch on the GPU, as a ratio to `x.clone()`.

Run from the repository root on a machine with a GPU, with fastai, timm and torchvision installed:

    python bench/bench_gpu.py                      # writes bench/results_gpu.json
    python bench/bench_gpu.py --out /tmp/gpu.json  # elsewhere
    python bench/bench_gpu.py --smoke              # without a GPU: the checks' code runs on the CPU (tools/test.sh)

1. Syncs: each of our functions and callbacks, the drop-ins for timm and torchvision (`mixup_nbdev.compat`: timm's
   `Mixup` in every mode, torchvision's `MixUp` and `CutMix` per batch and per sample, in a plain loop with their soft
   targets), and two training loops (a plain PyTorch loop, and fastai's `fit` with
   each callback), run under `torch.cuda.set_sync_debug_mode('error')`, which turns anything that would make the host
   wait for the device (`.item()`, a copy from pageable host memory, `nonzero`...) into an error. In `fit`, the mode is
   on from the start of `before_batch` to the end of `after_loss` (our callbacks' whole per-batch work, the model's
   forward pass and the loss): fastai's own `Recorder` reads the loss on the host after each batch, which is not ours.
2. Timing: the candidates of `bench_mix.py`, on the GPU. Three figures per call, each the median over the rounds:
   - busy: the time the GPU spends running the call's kernels and copies (torch's profiler, CUPTI), which is what
     mixing takes from the GPU in training, where the host queues work ahead of the device;
   - events: the stream's time from the call's start to its end (CUDA events), gaps where the GPU waits for the host
     to launch the next kernel included, which is what mixing costs when nothing else keeps the GPU busy;
   - host: the time the Python call takes to return, kernels queued but not waited for.
   Events and host times are interleaved in a new random order each round; busy time is profiled per candidate.
   `bench_mix.py`'s speed targets are checked on the busy time.
"""
import argparse, json, os, random, sys, time, gc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import importlib.util  # this clone's package where none is importable (a bare machine); else the one installed, or a copy on PYTHONPATH
if importlib.util.find_spec('mixup_nbdev') is None: sys.path.insert(1, str(HERE.parent))
import torch
from bench_mix import candidates, seed, check_targets, SHAPES

def sync_checks(dev, shapes=SHAPES):
    "Each of our per-batch paths under `set_sync_debug_mode('error')` (on a CPU: the same code, with no mode to set): {name: 'ok' or the error}"
    import torch.nn.functional as F
    from fastai.vision.all import Learner, Callback, CrossEntropyLossFlat, SGD
    from mixup_nbdev.functional import mixup_batch, cutmix_batch, cutmixup_batch, DrawAhead, saliencymix_batch, remix_lam, regmixup_loss
    from mixup_nbdev.mixup import MixUp, CutMix, CutMixUp
    from mixup_nbdev.guided_mixup import SaliencyMix, TransMix, RegMixup, Remix
    import timm
    from mixup_nbdev.data import digits_dls, small_cnn
    cuda = torch.device(dev).type == 'cuda'
    set_mode = torch.cuda.set_sync_debug_mode if cuda else lambda mode: None
    res = {}
    def check(name, f, mode='error'):
        "Run `f` with the debug mode `mode` (fastai's `fit`: 'default', its callbacks set the mode)"
        try:
            set_mode(mode)
            try: f()
            finally: set_mode('default')
            if cuda: torch.cuda.synchronize()
            res[name] = 'ok'
        except Exception as e: res[name] = f'{type(e).__name__}: {str(e)[:200]}'
    # every candidate of ours, after a first call outside the mode (it builds caches, as a first batch would)
    for key, shape in shapes.items():
        cands, _ = candidates(shape, dev)
        for c in cands:
            if c.lib != 'ours': continue
            c.reset(); c.call(); c.reset()
            def three(): [(c.reset(), c.call()) for _ in range(3)]
            check(f'{c.name}, {key}²', three)
            c.reset()
    # a plain PyTorch loop, every batch under the mode, the first one included
    x, y = torch.randn(512, 3, 32, 32, device=dev), torch.randint(0, 10, (512,), device=dev)
    counts = torch.arange(10, 20, device=dev)
    for name, mix in [('mixup_batch', lambda x, y, d: mixup_batch(x, y, .4, draws=d)),
                      ('cutmix_batch', lambda x, y, d: cutmix_batch(x, y, 1., inplace=True)),
                      ('cutmix_batch per_sample', lambda x, y, d: cutmix_batch(x, y, 1., per_sample=True, draws=d)),
                      ('cutmixup_batch per_sample', lambda x, y, d: cutmixup_batch(x, y, per_sample=True)),
                      ('saliencymix_batch', lambda x, y, d: saliencymix_batch(x, y)),
                      ('saliencymix_batch per_sample', lambda x, y, d: saliencymix_batch(x, y, per_sample=True, draws=d)),
                      ('mixup_batch, remix_lam', lambda x, y, d: (lambda m: m._replace(lam=remix_lam(m.lam, y, m.yb1[0], counts)))(mixup_batch(x, y, draws=d)))]:
        torch.manual_seed(0); random.seed(0)
        model = small_cnn(3).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=.1)
        def loop():
            d = DrawAhead()
            for i in range(0, 512, 64):
                m = mix(x[i:i+64], y[i:i+64], d)
                loss = m.loss(F.cross_entropy, model(*m.xb))
                opt.zero_grad(); loss.backward(); opt.step()
        check(f'plain loop, {name}', loop)
    def regmixup_loop():
        for i in range(0, 512, 64):
            xb, yb = x[i:i+64], y[i:i+64]
            m = mixup_batch(xb, yb, 10.)
            loss = regmixup_loss(F.cross_entropy, model(torch.cat([xb, m.xb[0]])), (yb,), m)
            opt.zero_grad(); loss.backward(); opt.step()
    check('plain loop, regmixup_loss', regmixup_loop)
    # the drop-ins in a plain loop with soft targets, every batch under the mode, the first one included: timm's `Mixup`
    # in each mode with MixUp, CutMix, the switch and CutMix's `cutmix_minmax`, on even and odd batches; torchvision's
    # `MixUp` and `CutMix`, per batch and per sample (`FastCollateMixup` mixes on the host, in the loader: not here)
    from mixup_nbdev.compat import timm as compat_timm, torchvision as compat_tv
    def soft_loop(mix, bs=64, batches=3):
        torch.manual_seed(0); random.seed(0)
        model = small_cnn(3).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=.1)
        def loop():
            for i in range(0, batches*bs, bs):
                xm, t = mix(x[i:i+bs], y[i:i+bs])
                loss = torch.sum(-t * F.log_softmax(model(xm), -1), -1).mean()
                opt.zero_grad(); loss.backward(); opt.step()
        return loop
    for mode in compat_timm.Mixup.modes:
        for method, kw in (('MixUp', {}), ('CutMix', dict(mixup_alpha=0., cutmix_alpha=1.)),
                           ('MixUp or CutMix', dict(cutmix_alpha=1.)),
                           ('CutMix minmax', dict(mixup_alpha=0., cutmix_minmax=(.2, .8)))):
            for bs in (64, 63):
                check(f'plain loop, compat.timm.Mixup {mode}, {method}, batches of {bs}',
                      soft_loop(compat_timm.Mixup(num_classes=10, mode=mode, **kw), bs))
    for T in (compat_tv.MixUp, compat_tv.CutMix):
        for per_sample in (False, True):
            check(f'plain loop, compat.torchvision.{T.__name__}' + ('(per_sample=True)' if per_sample else ''),
                  soft_loop(T(num_classes=10, per_sample=per_sample)))
    # the detection functions on padded targets, every batch under the mode
    from functools import partial
    from mixup_nbdev.functional import Boxes, pad_targets, mixup_detection, cutmix_detection, mosaic_detection, copy_paste_detection
    from mixup_nbdev.data import shapes_det, shapes_det_dls
    imgs, tg = shapes_det(64, seed=0)
    xd = torch.tensor(imgs).permute(0, 3, 1, 2).float().div(255).to(dev)
    bd = pad_targets([{k: v.to(dev) for k, v in t.items()} for t in tg], (64, 64))[0]
    for name, f in (('mixup_detection', mixup_detection), ('cutmix_detection', cutmix_detection),
                    ('cutmix_detection per_sample', partial(cutmix_detection, per_sample=True)), ('mosaic_detection', mosaic_detection),
                    ('mosaic_detection scale, mixup_p', partial(mosaic_detection, scale=(.5, 1.5), mixup_p=1.)), ('copy_paste_detection', copy_paste_detection)):
        f(xd[:16], Boxes(*(None if t is None else t[:16] for t in bd)))
        check(f'padded, {name}', lambda: [f(xd[i:i+16], Boxes(*(None if t is None else t[i:i+16] for t in bd))) for i in range(0, 64, 16)])
    # partners from a bank at two samples a batch, every batch under the mode, the bank's first one (its allocation) included
    from mixup_nbdev.functional import PartnerBank, ricap_batch, mosaic_batch
    for name, f in (('mixup_batch', mixup_batch), ('cutmix_batch per_sample', partial(cutmix_batch, per_sample=True)),
                    ('ricap_batch', ricap_batch), ('mosaic_batch', mosaic_batch)):
        bank = PartnerBank(8)
        check(f'bank, {name}, batches of 2', lambda: [f(x[i:i+2], y[i:i+2], bank=bank) for i in range(0, 16, 2)])
    for name, f in (('mosaic_detection', mosaic_detection), ('cutmix_detection', cutmix_detection)):
        bank = PartnerBank(8)
        check(f'bank, padded, {name}, batches of 2',
              lambda: [f(xd[i:i+2], Boxes(*(None if t is None else t[i:i+2] for t in bd)), bank=bank) for i in range(0, 16, 2)])
    # fastai's fit: the mode on from before_batch to after_loss
    class On(Callback):
        order = -100
        def before_batch(self): set_mode('error')
        def after_loss(self): set_mode('error')
    class Off(Callback):
        order = 100
        def before_batch(self): set_mode('default')
        def after_loss(self): set_mode('default')
        def after_cancel_batch(self): set_mode('default')
    dls = digits_dls(device=dev)
    vit = lambda: timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, in_chans=1, num_classes=10, embed_dim=32, depth=2, num_heads=2)
    for cb in (MixUp(), CutMix(), CutMix(per_sample=True), CutMixUp(per_sample=True), SaliencyMix(), SaliencyMix(per_sample=True),
               TransMix(), RegMixup(), Remix(MixUp())):
        name = f'fit, {type(cb).__name__}' + ('(per_sample=True)' if getattr(cb, 'per_sample', False) else '')
        model = vit() if isinstance(cb, TransMix) else small_cnn()
        learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), cbs=[On(), cb, Off()], opt_func=SGD)
        def fit():
            with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
        check(name, fit, 'default')
        set_mode('default')
    # fastai's fit on detection batches, with a loss that reads the padded labels only
    from mixup_nbdev.mixup import Mosaic
    ddls = shapes_det_dls(n=64, bs=16, device=dev)
    def count_loss(pred, bb, lb): return F.mse_loss(pred[:, 0], (lb > 0).float().sum(1))
    for cb in (MixUp(), CutMix(per_sample=True), Mosaic(mixup_p=.5)):
        learn = Learner(ddls, torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, 2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 1)),
                        loss_func=count_loss, cbs=[On(), cb, Off()], opt_func=SGD)
        def fit():
            with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
        check(f'fit detection, {type(cb).__name__}', fit, 'default')
        set_mode('default')
    return res

def time_gpu(shape, rounds, warmup=5):
    "Median GPU ms (CUDA events) and host ms of every candidate, interleaved"
    cands, x = candidates(shape, 'cuda')
    x0 = x.clone()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in cands]
    gpu, host = {id(c): [] for c in cands}, {id(c): [] for c in cands}
    order = list(zip(cands, ev))
    shuffle = random.Random(0).shuffle
    gc.disable()
    try:
        for r in range(warmup + rounds):
            shuffle(order)
            x.copy_(x0)
            for c, (e0, e1) in order:
                seed(r); c.reset()
                torch.cuda.synchronize()
                t0 = time.perf_counter(); e0.record(); res = c.call(); e1.record(); t1 = time.perf_counter()
                torch.cuda.synchronize()
                del res; c.reset()
                if r >= warmup: gpu[id(c)].append(e0.elapsed_time(e1)); host[id(c)].append((t1 - t0) * 1e3)
            gc.collect()
    finally: gc.enable()
    med = lambda v: sorted(v)[len(v)//2]
    busy = {id(c): busy_ms(c) for c in cands}
    clone, clone_busy = med(gpu[id(cands[0])]), busy[id(cands[0])] or float('nan')  # nan: the profiler saw no kernel
    return [dict(shape=f'{shape[2]}', group=c.group, lib=c.lib, name=c.name, target=c.target, busy_ms=busy[id(c)], ratio=busy[id(c)] / clone_busy,
                 gpu_ms=med(gpu[id(c)]), events_ratio=med(gpu[id(c)]) / clone, host_ms=med(host[id(c)])) for c in cands]

def busy_ms(c, calls=21):
    "Median time the GPU spends in the kernels and copies of one call of `c`, by torch's profiler"
    from torch.profiler import profile, ProfilerActivity
    per_call = []
    for r in range(calls):
        seed(r); c.reset(); torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            res = c.call(); torch.cuda.synchronize()
        del res; c.reset()
        per_call.append(sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA) / 1e3)
    return sorted(per_call)[calls//2]

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--rounds', type=int, default=100)
    ap.add_argument('--out', default=str(HERE/'results_gpu.json'))
    ap.add_argument('--smoke', action='store_true', help="without a GPU: run the checks' code on the CPU, on tiny batches; writes nothing")
    a = ap.parse_args()
    import warnings; warnings.filterwarnings('ignore')
    if a.smoke:
        from bench_mix import SMOKE_SHAPES
        res = sync_checks('cpu', SMOKE_SHAPES)
        bad = {k: v for k, v in res.items() if v != 'ok'}
        print(f"smoke run: {len(res)} checks ran on the CPU" + (f", {len(bad)} failed: {bad}" if bad else ", all without error"))
        dropins = sum(k.startswith('plain loop, compat.') for k in res)  # 3 modes × 4 settings × 2 batch sizes, and 4
        sys.exit(1 if bad or len(res) < 20 or dropins != 28 else 0)
    if not torch.cuda.is_available(): sys.exit('no CUDA GPU here: this benchmark needs one (--smoke runs its checks on the CPU)')
    import fastai, timm, torchvision
    started = time.strftime('%Y-%m-%d %H:%M:%S %Z')
    syncs = sync_checks('cuda')
    print('host-device syncs refused (set_sync_debug_mode("error")):')
    for k, v in syncs.items(): print(f"  {'PASS' if v == 'ok' else 'FAIL'}  {k}" + ('' if v == 'ok' else f': {v}'))
    rows = [r for s in SHAPES.values() for r in time_gpu(s, a.rounds)]
    print(f"\nper batch on {torch.cuda.get_device_name()}: GPU busy time (profiler), stream time (CUDA events, {a.rounds} rounds), host time of the call")
    print(f"{'group':<26}{'library':<12}{'candidate':<42}" + ''.join(f"{s+'² busy µs':>13}{'×clone':>8}{'events':>8}{'×clone':>8}{'host µs':>9}" for s in SHAPES))
    for k in dict.fromkeys((r['group'], r['lib'], r['name']) for r in rows):
        line = f"{k[0]:<26}{k[1]:<12}{k[2]:<42}"
        for s in SHAPES:
            r = next(r for r in rows if (r['group'], r['lib'], r['name']) == k and r['shape'] == s)
            line += f"{r['busy_ms']*1e3:>13.1f}{r['ratio']:>8.2f}{r['gpu_ms']*1e3:>8.1f}{r['events_ratio']:>8.2f}{r['host_ms']*1e3:>9.1f}"
        print(line)
    targets = check_targets([dict(r, view='reuse', median_ms=r['busy_ms']) for r in rows], [])  # bench_mix.py's, on GPU busy time
    print('\ntargets (GPU busy time):')
    for t in targets: print(f"  {'PASS' if t['ok'] else 'FAIL'}  {t['target']}: {t['value']}")
    out = dict(command='python bench/bench_gpu.py' + (f' --rounds {a.rounds}' if a.rounds != 100 else ''), started=started,
               gpu=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda, fastai=fastai.__version__,
               timm=timm.__version__, torchvision=torchvision.__version__, rounds=a.rounds, syncs=syncs, rows=rows, targets=targets)
    Path(a.out).write_text(json.dumps(out, indent=1, ensure_ascii=False))
    print(f"wrote {a.out}")

if __name__ == '__main__': main()
