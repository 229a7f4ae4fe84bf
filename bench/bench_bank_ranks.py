"""What partners across ranks cost: `PartnerBank(0, across_ranks=True)` (every other rank's batch, no bank) against the
same call without it, under `torch.distributed` on 2 CPU ranks over gloo, launched by torchrun.

Usage: python bench/bench_bank_ranks.py [--rounds 3] [--out bench/results_bank_ranks.json] [--smoke]

Both ranks make the same calls in the same order, one torch thread each; rank 0's times count, and they include any
wait for rank 1 at the `all_gather`. Each row alternates the call with and without partners across ranks, 9 samples of
repeated calls, and its figure is the median of the per-sample ratios (with / without), then the median over the
rounds, each round a fresh launch. `all_gather` is the collective alone (`_other_ranks` of the batch's inputs and
targets) over the call without partners across ranks. The last row of each case is a whole DDP training step of a
small CNN with CutMix (the mix, forward, loss, backward with DDP's gradient all-reduce, SGD).
"""
import json, os, statistics, subprocess, sys
from pathlib import Path
from bench_sources import calls, sample  # this folder is on the path of a script run from it
from bench_bank import CASES, small_cnn, arguments, merged


def worker(smoke:bool)->dict:
    "Rank 0's seconds without partners across ranks, and the ratios with them, row by row"
    import torch, torch.distributed as dist
    import mixup_nbdev.functional as mf
    from mixup_nbdev.bank import _other_ranks
    torch.set_num_threads(1)
    dist.init_process_group('gloo')
    res, n_samples = {}, 2 if smoke else 9
    for case, (bs, side) in CASES.items():
        if smoke: side = 16
        torch.manual_seed(dist.get_rank())
        x, y = torch.rand(bs, 3, side, side), torch.randint(0, 1000, (bs,))
        ranks = mf.PartnerBank(0, across_ranks=True)
        rows = {'mixup_batch': mf.mixup_batch, 'cutmix_batch': mf.cutmix_batch}
        for row, f in rows.items():
            plain, across = (lambda: f(x, y)), (lambda: f(x, y, bank=ranks))
            gather = lambda: (_other_ranks(x), _other_ranks(y))
            n = calls(plain, .002 if smoke else .02)
            n = torch.tensor(n); dist.broadcast(n, 0); n = int(n)  # the same number of calls on both ranks
            a, b, g = [], [], []
            for _ in range(n_samples): a.append(sample(plain, n)); b.append(sample(across, n)); g.append(sample(gather, n))
            res[f'{case}|{row}'] = dict(s=statistics.median(a), across=statistics.median(p / q for p, q in zip(b, a)),
                                        gather=statistics.median(p / q for p, q in zip(g, a)))
        torch.manual_seed(0)  # the same initial weights on both ranks, as DDP needs
        model = torch.nn.parallel.DistributedDataParallel(small_cnn())
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        def step(bank=None):
            m = mf.cutmix_batch(x, y, bank=bank)
            loss = m.loss(torch.nn.functional.cross_entropy, model(m.xb[0]))
            opt.zero_grad(); loss.backward(); opt.step()
        n = calls(step, .002 if smoke else .05)
        n = torch.tensor(n); dist.broadcast(n, 0); n = int(n)
        a, b = [], []
        for _ in range(n_samples): a.append(sample(step, n)); b.append(sample(lambda: step(ranks), n))
        res[f'{case}|a DDP training step of a small CNN (cutmix_batch)'] = dict(
            s=statistics.median(a), across=statistics.median(p / q for p, q in zip(b, a)), gather=float('nan'))
    dist.destroy_process_group()
    return res

def main():
    args = arguments('results_bank_ranks.json')
    if args.worker:
        res = worker(args.smoke)
        if os.environ.get('RANK') == '0': print(json.dumps(res))
        return
    here = str(Path(__file__).resolve().parents[1])
    runs = []
    for r in range(1 if args.smoke else args.rounds):
        env = dict(os.environ, PYTHONPATH=f"{here}{os.pathsep}{Path(__file__).parent}", OMP_NUM_THREADS='1')
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', __file__, '--worker'] + (['--smoke'] if args.smoke else [])
        out = subprocess.run(cmd, env=env, cwd='/', capture_output=True, text=True, timeout=1200)
        if out.returncode: sys.exit(f"torchrun failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        runs.append(json.loads([l for l in out.stdout.splitlines() if l.startswith('{')][-1]))
        print(f'round {r+1}', flush=True)
    res = merged(runs, 'across')
    w = max(len(k) for k in res)
    print(f"{'row':{w}}  ms (rank 0, alone)  across ranks / alone  (rounds)  all_gather / alone")
    for k, d in res.items(): print(f"{k:{w}}  {d['ms']:17.3f}  {d['across']:21.3f}  {d['across_rounds']}  {d['gather']:.3f}")
    if not args.smoke: Path(args.out).write_text(json.dumps(dict(rounds=args.rounds, threads=1, ranks=2, backend='gloo', rows=res), indent=1))

if __name__ == '__main__': main()
