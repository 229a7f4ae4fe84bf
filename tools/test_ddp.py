"""The mixing callbacks under DDP, on the CPU: 2 processes over gloo, launched by torchrun (CI runs this).

`python tools/test_ddp.py` launches examples/train_ddp.py's recipe through this same file in worker mode and checks:
1. both ranks finish, report the same validation metrics and end with the same weights, `learn.loss_func` is the
   original object on both, and each rank mixed its own shard with its own λ;
2. a second launch with the same seed gives the same numbers;
3. a rank that raises inside a batch (CutMixUp) stops the launch within a time limit, and the output names that rank;
4. a rank that hangs inside a batch (CutMix) makes the others fail at the collective timeout instead of waiting forever.
Every launch runs under a watchdog that kills all its processes if it overruns, so a hang cannot block CI.
"""
from __future__ import annotations
import argparse, importlib.util, json, os, re, shutil, signal, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------- worker (one rank)
def worker(a):
    spec = importlib.util.spec_from_file_location('train_ddp', ROOT/'examples'/'train_ddp.py')
    ex = importlib.util.module_from_spec(spec); spec.loader.exec_module(ex)
    from fastai.vision.all import Callback, rank_distrib, num_distrib
    import torch
    from mixup_nbdev.mixup import MixHandler

    class Fingerprint(Callback):
        "Record, for the first `n` training batches of each epoch, the shard's targets and the mixing drawn for it"
        order = MixHandler.order + 1  # after the mixing callback's `before_batch`
        def __init__(self, n=3): self.n,self.batches = n,[]
        def before_batch(self):
            if not self.training or self.iter >= self.n: return
            mix = self.learn.cbs.filter(lambda o: isinstance(o, MixHandler))[0]
            self.batches.append(dict(epoch=self.epoch, iter=self.iter, y=self.yb[0].tolist(),
                                     lam=torch.as_tensor(mix.lam).flatten().tolist(), shift=int(mix.shift),
                                     x=float(self.xb[0].double().sum())))

    class Fault(Callback):
        "On rank `rank`, in training batch `it` of epoch 0, raise or hang (after the forward pass, before the gradient all-reduce)"
        def __init__(self, rank, it, mode): self.rank,self.it,self.mode = rank,it,mode
        def after_pred(self):
            if rank_distrib() != self.rank or not self.training or self.epoch or self.iter != self.it: return
            if self.mode == 'raise': raise RuntimeError(f"fault injected by the test in batch {self.it}")
            time.sleep(10**6)

    rank = rank_distrib()
    with ex.rank_errors():
        learn = ex.digits_learner(a.bs, a.seed, cpu=True)
        lf, model = learn.loss_func, learn.model
        fp = Fingerprint()
        cbs = [ex.make_mixer(a.mix), fp] + ([Fault(a.fail_rank, 3, a.fail_mode)] if a.fail_mode else [])
        ex.fit_distributed(learn, a.epochs, 1e-2, cbs, a.seed, cpu=True, timeout=a.timeout)
        mix = learn.cbs.filter(lambda o: isinstance(o, MixHandler))
    res = dict(rank=rank, world_size=num_distrib(), backend=torch.distributed.get_backend(),
               metric_names=list(learn.recorder.metric_names[1:-1]), values=[list(map(float, v)) for v in learn.recorder.values],
               loss_func_is_original=learn.loss_func is lf, model_unwrapped=learn.model is model,
               mixer_left_in_cbs=len(mix), params=float(sum(p.double().sum() for p in learn.model.parameters())),
               batches=fp.batches)
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

def driver(a, tmp):
    check = Checks()
    tail = lambda s: '\n'.join(s.splitlines()[-30:])
    # 1. a healthy run
    rc, secs, log = launch(tmp/'a', '--mix', a.mix, '--epochs', a.epochs)
    r = load(tmp/'a')
    check(rc == 0 and all(r), f"torchrun with 2 ranks and {a.mix} finished ({how(rc, secs)})")
    if rc != 0 or not all(r): print(tail(log)); return check.failed
    r0, r1 = r
    check(r0['world_size'] == r1['world_size'] == 2 and r0['backend'] == r1['backend'] == 'gloo', "2 ranks over gloo")
    check(len(r0['values']) == a.epochs, f"{a.epochs} epochs recorded")
    check(r0['values'] == r1['values'], f"both ranks report the same losses and metrics: {r0['values'][-1]} {r0['metric_names']}")
    check(r0['params'] == r1['params'], "both ranks end with the same weights")
    check(r0['loss_func_is_original'] and r1['loss_func_is_original'], "learn.loss_func is the original object on both ranks")
    check(r0['model_unwrapped'] and r1['model_unwrapped'], "learn.model is the original module again after distrib_ctx")
    check(r0['mixer_left_in_cbs'] == r1['mixer_left_in_cbs'] == 0, "the mixing callback is removed after fit on both ranks")
    b0, b1 = r0['batches'], r1['batches']
    check(len(b0) == len(b1) == 3*a.epochs, "fingerprints of the first 3 batches of each epoch on both ranks")
    check(all(p['y'] != q['y'] for p,q in zip(b0, b1)), "each rank trains on its own shard (targets differ)")
    check(all(p['lam'] != q['lam'] and p['x'] != q['x'] for p,q in zip(b0, b1)), "each rank mixes its own shard with its own λ")
    check(all(len(p['y']) == a.bs and min(p['lam']) < 1 for p in b0 + b1), f"shards of {a.bs} samples, mixed")
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
    p.add_argument('--fail_rank', type=int, default=1)
    p.add_argument('--fail_mode', choices=['raise', 'hang'])
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
