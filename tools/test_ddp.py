"""The mixing callbacks under DDP, on the CPU: 2 processes over gloo, launched by torchrun (CI runs this).

`python tools/test_ddp.py` launches examples/train_ddp.py's recipe through this same file in worker mode and checks:
1. both ranks finish, report the same validation metrics and end with the same weights, `learn.loss_func` is the
   original object on both, and each rank mixed its own shard with its own λ;
2. a second launch with the same seed gives the same numbers;
3. a rank that raises inside a batch (CutMixUp) stops the launch within a time limit, and the output names that rank;
4. a rank that hangs inside a batch (CutMix) makes the others fail at the collective timeout instead of waiting forever;
5. ManifoldMixup (a residual CNN: the images or a block's output, chosen per batch) and OutputMixup train on 2 ranks
   with the checks of 1., and, batch by batch on each rank, what reaches the layer after the chosen block (or the
   loss) is exactly λ·h + (1-λ)·h[partner] of the unmixed h, with the rank's own λ; validation runs the plain model,
   and no hook is left on the model after the fit;
6. SaliencyMix and RegMixup (whose shards are doubled: the clean samples, then their mixed copies) train on 2 ranks
   with the checks of 1.
7. MixUp with `PartnerBank(8, across_ranks=True)` at 4 samples a rank trains with the checks of 1., and every batch's
   record holds partners from the two ranks' batches of that step (their targets and unmixed inputs), never the sample
   itself, and each rank draws some from the other's.
Every launch runs under a watchdog that kills all its processes if it overruns, so a hang cannot block CI.
"""
from __future__ import annotations
import argparse, importlib.util, json, math, os, re, shutil, signal, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------- worker (one rank)
def worker(a):
    spec = importlib.util.spec_from_file_location('train_ddp', ROOT/'examples'/'train_ddp.py')
    ex = importlib.util.module_from_spec(spec); spec.loader.exec_module(ex)
    from fastai.vision.all import Callback, rank_distrib, num_distrib
    import torch
    from torch import nn
    from fastai.vision.all import ConvLayer, ResBlock, Flatten
    from mixup_nbdev.mixup import MixHandler
    from mixup_nbdev.functional import BankParams, PartnerBank
    import mixup_nbdev.manifold  # so that `make_mixer` knows 'manifoldmixup' and 'outputmixup'

    class Fingerprint(Callback):
        "Record, for the first `n` training batches of each epoch, the shard's targets and the mixing drawn for it"
        order = MixHandler.order + 1  # after the mixing callback's `before_batch`
        def __init__(self, n=3): self.n,self.batches = n,[]
        def before_batch(self):
            if not self.training or self.iter >= self.n: return
            mix = self.learn.cbs.filter(lambda o: isinstance(o, MixHandler))[0]
            b = dict(epoch=self.epoch, iter=self.iter, y=self.yb[0].tolist(), lam=torch.as_tensor(mix.lam).flatten().tolist(),
                     shift=torch.as_tensor(mix.shift).tolist(), x=float(self.xb[0].double().sum()), raw_x=self.raw_x)
            if isinstance(mix.params, BankParams):  # each sample's partner: its target and the sum of its unmixed input
                xs, ys = mix.params.rows
                b.update(partners=list(zip(ys.tolist(), xs.double().flatten(1).sum(1).tolist())), raw_xs=self.raw_xs)
            self.batches.append(b)

    class RawX(Callback):
        "The unmixed inputs' sum, for `Fingerprint`"
        order = MixHandler.order - 1
        def __init__(self, fp): self.fp = fp
        def before_batch(self):
            x = self.xb[0].double()
            self.fp.raw_x, self.fp.raw_xs = float(x.sum()), x.flatten(1).sum(1).tolist()

    class Fault(Callback):
        "On rank `rank`, in training batch `it` of epoch 0, raise or hang (after the forward pass, before the gradient all-reduce)"
        def __init__(self, rank, it, mode): self.rank,self.it,self.mode = rank,it,mode
        def after_pred(self):
            if rank_distrib() != self.rank or not self.training or self.epoch or self.iter != self.it: return
            if self.mode == 'raise': raise RuntimeError(f"fault injected by the test in batch {self.it}")
            time.sleep(10**6)

    def n_hooks(model): return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    def expected(h, lam, shift):
        "λ·h + (1-λ)·h[partner], computed here in float64 rather than with the library's functions"
        h, bs = h.double(), h.shape[0]
        idx = shift if isinstance(shift, torch.Tensor) else (torch.arange(bs) + int(shift)) % bs
        w = lam.double().view(-1, *[1]*(h.ndim-1))
        return w*h + (1-w)*h[idx]

    class InsideSpy(Callback):
        "Mixing inside the model, each training batch: the unmixed and the mixed value at the chosen site (or of the output); validation's hooks and output"
        order = MixHandler.order + 1  # after the mixer's `before_batch` (its hook is on) and its `after_pred` (output mixed, hook off)
        def before_fit(self): self.train,self.valid,self.hs = [],[],[]
        def _watch(self, module, pre):
            "Record what `module` receives (`pre`) or returns, before the mixer's hook (prepended) and after it"
            raw, seen = [], []
            if pre: self.hs += [module.register_forward_pre_hook(lambda m, a: raw.append(a[0].detach().clone()), prepend=True),
                                module.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))]
            else: self.hs += [module.register_forward_hook(lambda m, a, o: raw.append(o.detach().clone()), prepend=True),
                              module.register_forward_hook(lambda m, a, o: seen.append(o.detach().clone()))]
            return raw, seen
        def before_batch(self):
            self.mix = self.learn.cbs.filter(lambda o: isinstance(o, MixHandler))[0]
            self.hooks0 = n_hooks(self.learn.model)
            site = getattr(self.mix, 'site', None) if self.training else None
            self.site = site.name if site is not None else 'output'
            self.rec = self._watch(site.module, site.at_input) if site is not None and site.module is not None else self._watch(self.learn.model, False)
        def after_pred(self):
            for h in self.hs: h.remove()
            self.hs = []
            raw, seen = self.rec
            if not self.training:
                self.valid.append(dict(hooks=self.hooks0, plain=bool(torch.equal(self.pred, raw[0]))))
                return
            if self.site == 'input': self.train.append(dict(site='input')); return
            got = self.pred if self.site == 'output' else seen[0]
            want = expected(raw[0], self.mix.lam, self.mix.shift)
            self.train.append(dict(site=self.site, calls=len(raw), err=float((got.double() - want).abs().max() / (1 + want.abs().max())),
                                   moved=float((got.double() - raw[0].double()).abs().max())))
        def after_cancel_batch(self):
            for h in self.hs: h.remove()
            self.hs = []

    def res_cnn():
        "A small CNN with two of fastai's residual blocks, the places ManifoldMixup finds by itself"
        return nn.Sequential(ConvLayer(1, 16, stride=2), ResBlock(1, 16, 16), ResBlock(1, 16, 32, stride=2),
                             nn.AdaptiveAvgPool2d(1), Flatten(), nn.Linear(32, 10))

    rank = rank_distrib()
    with ex.rank_errors():
        learn = ex.digits_learner(a.bs, a.seed, cpu=True)
        if a.model == 'res_cnn':
            torch.manual_seed(a.seed); learn.model = res_cnn()
        lf, model = learn.loss_func, learn.model
        fp = Fingerprint()
        inside = [InsideSpy()] if a.mix in ('manifoldmixup', 'outputmixup') else []
        mixer = ex.make_mixer(a.mix)
        if a.bank: mixer = type(mixer)(bank=PartnerBank(a.bank, across_ranks=True))
        cbs = [mixer, fp, RawX(fp)] + inside + ([Fault(a.fail_rank, 3, a.fail_mode)] if a.fail_mode else [])
        ex.fit_distributed(learn, a.epochs, 1e-2, cbs, a.seed, cpu=True, timeout=a.timeout)
        mix = learn.cbs.filter(lambda o: isinstance(o, MixHandler))
    res = dict(rank=rank, world_size=num_distrib(), backend=torch.distributed.get_backend(),
               metric_names=list(learn.recorder.metric_names[1:-1]), values=[list(map(float, v)) for v in learn.recorder.values],
               loss_func_is_original=learn.loss_func is lf, model_unwrapped=learn.model is model,
               mixer_left_in_cbs=len(mix), params=float(sum(p.double().sum() for p in learn.model.parameters())),
               batches=fp.batches, hooks_after_fit=n_hooks(learn.model), one_batch_own='one_batch' not in learn.__dict__,
               inside=dict(train=inside[0].train, valid=inside[0].valid) if inside else None)
    Path(a.out, f'rank{rank}.json').write_text(json.dumps(res))

# ------------------------------------------------------------------------------------------------------- driver
def launch(out, *args, limit=240):
    "Run 2 workers under torchrun with a watchdog; return (exit code or None if killed, seconds, output)"
    os.makedirs(out, exist_ok=True)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           __file__, '--worker', '--out', str(out), *map(str, args)]
    env = dict(os.environ, PYTHONWARNINGS='ignore', MPLBACKEND='Agg')
    log = Path(out, 'launch.log')
    t0 = time.time()
    with open(log, 'w') as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try: rc = p.wait(limit)
        except subprocess.TimeoutExpired:
            kill_tree(p.pid); p.wait(); rc = None
    return rc, time.time()-t0, log.read_text(errors='replace')

def kill_tree(pid):
    "Kill torchrun's process group and its workers' (torchrun starts each worker in a session of its own)"
    import psutil
    try: procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess: procs = []
    groups = {pid}
    for q in procs:
        try: groups.add(os.getpgid(q.pid))
        except ProcessLookupError: pass
    for pg in groups:
        try: os.killpg(pg, signal.SIGKILL)
        except ProcessLookupError: pass

class Checks:
    def __init__(self): self.failed = []
    def __call__(self, ok, what):
        print(('ok   ' if ok else 'FAIL ') + what, flush=True)
        if not ok: self.failed.append(what)

def how(rc, secs): return f"killed by the watchdog after {secs:.0f} s" if rc is None else f"exit code {rc}, {secs:.0f} s"

def load(out): return [json.loads(Path(out, f'rank{r}.json').read_text()) if Path(out, f'rank{r}.json').exists() else None for r in (0, 1)]

tail = lambda s: '\n'.join(s.splitlines()[-30:])

def healthy(check, rc, secs, log, r, mix, epochs, bs):
    "The checks of a run that should train: both ranks, in sync, each mixing its own shard; False if it did not finish"
    check(rc == 0 and all(r), f"torchrun with 2 ranks and {mix} finished ({how(rc, secs)})")
    if rc != 0 or not all(r): print(tail(log)); return False
    r0, r1 = r
    check(r0['world_size'] == r1['world_size'] == 2 and r0['backend'] == r1['backend'] == 'gloo', "2 ranks over gloo")
    check(len(r0['values']) == epochs, f"{epochs} epochs recorded")
    check(r0['values'] == r1['values'], f"both ranks report the same losses and metrics: {r0['values'][-1]} {r0['metric_names']}")
    check(all(math.isfinite(v) for v in sum(r0['values'], [])), "losses and metrics finite")
    check(r0['params'] == r1['params'], "both ranks end with the same weights")
    check(r0['loss_func_is_original'] and r1['loss_func_is_original'], "learn.loss_func is the original object on both ranks")
    check(r0['model_unwrapped'] and r1['model_unwrapped'], "learn.model is the original module again after distrib_ctx")
    check(r0['mixer_left_in_cbs'] == r1['mixer_left_in_cbs'] == 0, "the mixing callback is removed after fit on both ranks")
    b0, b1 = r0['batches'], r1['batches']
    check(len(b0) == len(b1) == 3*epochs, "fingerprints of the first 3 batches of each epoch on both ranks")
    check(all(p['y'] != q['y'] for p,q in zip(b0, b1)), "each rank trains on its own shard (targets differ)")
    check(all(p['lam'] != q['lam'] and p['x'] != q['x'] for p,q in zip(b0, b1)), "each rank mixes its own shard with its own λ")
    check(all(len(p['y']) == bs and min(p['lam']) < 1 for p in b0 + b1), f"shards of {bs} samples, mixed")
    check(r0['hooks_after_fit'] == r1['hooks_after_fit'] == 0 and r0['one_batch_own'] and r1['one_batch_own'],
          "no hook left on the model, and the learner's own one_batch, after fit on both ranks")
    return True

def inside_checks(check, r, mix):
    "ManifoldMixup and OutputMixup: the mixing inside the model on each rank, batch by batch, and validation unmixed"
    for rank, res in enumerate(r):
        t, v = res['inside']['train'], res['inside']['valid']
        hidden = [b for b in t if b['site'] != 'input']
        sites = sorted({b['site'] for b in t})
        if mix == 'manifoldmixup':
            check(len(hidden) > 0 and len(sites) >= 2, f"rank {rank}: sites chosen over {len(t)} batches: {sites}")
        else: check(len(hidden) == len(t) > 0 and sites == ['output'], f"rank {rank}: the output mixed in all {len(t)} training batches")
        check(all(b['calls'] == 1 and b['err'] < 1e-5 and b['moved'] > 0 for b in hidden),
              f"rank {rank}: in each of {len(hidden)} batches, what follows the {'chosen block' if mix == 'manifoldmixup' else 'model'} got "
              f"λ·h + (1-λ)·h[partner] of the unmixed h with the rank's λ (largest error {max([b['err'] for b in hidden], default=0):.1e})")
        check(len(v) > 0 and all(b['hooks'] == 0 and b['plain'] for b in v), f"rank {rank}: {len(v)} validation batches through the plain model, no hook")

def driver(a, tmp):
    check = Checks()
    # 1. a healthy run
    rc, secs, log = launch(tmp/'a', '--mix', a.mix, '--epochs', a.epochs)
    r = load(tmp/'a')
    if not healthy(check, rc, secs, log, r, a.mix, a.epochs, a.bs): return check.failed
    # 2. the same seed gives the same run
    rc, secs, log = launch(tmp/'b', '--mix', a.mix, '--epochs', a.epochs)
    check(rc == 0 and load(tmp/'b') == r, f"a second launch with the same seed reproduces mixing, metrics and weights exactly ({how(rc, secs)})")
    if rc != 0: print(tail(log))
    # 3. a rank raises inside a batch, and 4. a rank hangs inside a batch: the other one times out at the gradient
    # all-reduce. Both launches run at once: the second one mostly waits.
    with ThreadPoolExecutor(2) as ex:
        c = ex.submit(launch, tmp/'c', '--mix', 'cutmixup', '--epochs', 1, '--fail_mode', 'raise', '--timeout', 60, limit=180)
        d = ex.submit(launch, tmp/'d', '--mix', 'cutmix', '--epochs', 1, '--fail_mode', 'hang', '--timeout', a.hang_timeout, limit=180)
    rc, secs, log = c.result()
    check(rc not in (0, None), f"a rank that raises stops the launch ({how(rc, secs)})")
    check('rank 1/2 failed: RuntimeError' in log and 'fault injected' in log, "the output says rank 1 failed, and why")
    check(re.search(r'Root Cause.*?rank\s*:\s*1 \(local_rank: 1\)', log, re.S) is not None, "torchrun's report names rank 1 as the root cause")
    if rc in (0, None) or 'rank 1/2 failed' not in log: print(tail(log))
    rc, secs, log = d.result()
    check(rc not in (0, None), f"a rank that hangs makes the launch fail at the {a.hang_timeout:.0f} s timeout, not hang ({how(rc, secs)})")
    check('rank 0/2 failed' in log and 'Timed out' in log, "the output says rank 0 timed out waiting")
    if rc in (0, None) or 'rank 0/2 failed' not in log: print(tail(log))
    # 5. Manifold Mixup: ManifoldMixup on a residual CNN (the images, or one of its two blocks, per batch), and OutputMixup;
    # both launches at once, one epoch each
    with ThreadPoolExecutor(2) as ex:
        runs = {mix: ex.submit(launch, tmp/mix, '--mix', mix, '--epochs', 1, '--model', 'res_cnn', limit=180)
                for mix in ('manifoldmixup', 'outputmixup')}
    for mix, f in runs.items():
        rc, secs, log = f.result()
        r = load(tmp/mix)
        if healthy(check, rc, secs, log, r, mix, 1, a.bs): inside_checks(check, r, mix)
    # 6. the guided methods: SaliencyMix (each rank's boxes from its own shard's saliency), and RegMixup (each rank's
    # shard doubled, the clean samples then their mixed copies); both launches at once, one epoch each
    guided = {name: f'mixup_nbdev.guided_mixup.{name}' for name in ('SaliencyMix', 'RegMixup')}
    with ThreadPoolExecutor(2) as ex:
        runs = {name: ex.submit(launch, tmp/name, '--mix', mix, '--epochs', 1, limit=180) for name, mix in guided.items()}
    for name, f in runs.items():
        rc, secs, log = f.result()
        healthy(check, rc, secs, log, load(tmp/name), name, 1, a.bs * (2 if name == 'RegMixup' else 1))
    # 7. partners from both ranks: a bank across ranks, at 4 samples a rank
    rc, secs, log = launch(tmp/'bank', '--mix', 'mixup', '--epochs', 1, '--bs', 4, '--bank', 8, limit=180)
    r = load(tmp/'bank')
    if healthy(check, rc, secs, log, r, 'MixUp(bank=PartnerBank(8, across_ranks=True))', 1, 4):
        b0, b1 = r[0]['batches'], r[1]['batches']
        def items(b): return [(y, round(s, 3)) for y, s in zip(b['y'], b['raw_xs'])]  # each sample: its target, its input's sum
        def partners(b): return [(y, round(s, 3)) for y, s in b.get('partners', [])]
        pairs = (*zip(b0, b1), *zip(b1, b0))  # each rank's batch, and the other rank's of the same step
        # a bank of 8 at 4 samples a rank holds exactly the two ranks' batches of the step
        check(all(partners(p) and set(partners(p)) <= set(items(p) + items(q)) for p, q in pairs),
              "with a bank across ranks, every partner is a sample of this step's batch on one of the ranks")
        check(all(a != b for p, _ in pairs for a, b in zip(partners(p), items(p))), "with a bank across ranks, no sample is its own partner")
        check(all(any(t in items(q) for p, q in zip(bp, bq) for t in partners(p)) for bp, bq in ((b0, b1), (b1, b0))),
              "with a bank across ranks, each rank draws partners from the other rank's batch")
    return check.failed

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--worker', action='store_true', help='run as one rank (torchrun starts these)')
    p.add_argument('--out', help='folder for the per-rank results (worker)')
    p.add_argument('--mix', default='mixup')
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--timeout', type=float, default=60, help='collective timeout of the process group, seconds (worker)')
    p.add_argument('--hang_timeout', type=float, default=20, help='collective timeout in the hanging-rank launch (driver)')
    p.add_argument('--bank', type=int, default=0, help='a PartnerBank of this size, across ranks (worker)')
    p.add_argument('--fail_rank', type=int, default=1)
    p.add_argument('--fail_mode', choices=['raise', 'hang'])
    p.add_argument('--model', choices=['small_cnn', 'res_cnn'], default='small_cnn', help="small_cnn, or a CNN with residual blocks (worker)")
    a = p.parse_args()
    if a.worker:
        from torch.distributed.elastic.multiprocessing.errors import record
        record(worker)(a)
    else:
        t0 = time.time()
        tmp = Path(tempfile.mkdtemp(prefix='test_ddp_'))
        failed = driver(a, tmp)
        if failed: print(f"launch logs and per-rank results: {tmp}")
        else: shutil.rmtree(tmp, ignore_errors=True)
        print(f"test_ddp: {'FAILED: ' + '; '.join(failed) if failed else 'all checks passed'} ({time.time()-t0:.0f} s)")
        sys.exit(1 if failed else 0)
