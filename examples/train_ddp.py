"""Distributed data-parallel training with a mixing callback, under fastai's `distrib_ctx` (Hugging Face accelerate).

Each process trains on its own shard of every batch and mixes that shard; DDP averages the gradients.
Launch 2 processes on one machine with either of (options after the script: `--mix cutmix --epochs 8` ...):

    torchrun --standalone --nproc_per_node 2 examples/train_ddp.py
    accelerate launch --multi_gpu --num_processes 2 examples/train_ddp.py

Without a GPU the processes train on the CPU over gloo; with GPUs, one GPU per process over NCCL.
`python examples/train_ddp.py` (no launcher) trains in one process, with the same code.
Explained in the docs page "Distributed training" (nbs/23_distributed.ipynb).
"""
from __future__ import annotations
import sys
from contextlib import contextmanager
from datetime import timedelta
from fastai.vision.all import *
from fastai.distributed import *
from fastcore.script import call_parse
from accelerate.utils import InitProcessGroupKwargs
from torch.distributed.elastic.multiprocessing.errors import record
# ours after fastai's: `fastai.vision.all` exports fastai's own `MixUp` and `CutMix`
from mixup_nbdev.mixup import *
from mixup_nbdev.data import digits_dls, small_cnn
from mixup_nbdev.train import make_mixer

# --- Workaround for training on the CPU (gloo), fastai 2.8.7 --------------------------------------------------
# `DistributedDL._broadcast` sends the epoch's sample order from rank 0 to the other ranks, and moves it to CUDA
# first because NCCL only takes CUDA tensors. gloo takes CPU tensors, and a machine without a GPU has no `.cuda()`.
# This script applies it only when it trains on the CPU; importing `mixup_nbdev` leaves fastai unchanged.
def _broadcast_cpu(self, t, rank):
    "`DistributedDL._broadcast` for gloo: broadcast `t` from `rank` as a CPU tensor"
    t = LongTensor(t)
    torch.distributed.broadcast(t, rank)
    return t.tolist()

def use_cpu_broadcast(): DistributedDL._broadcast = _broadcast_cpu
# ---------------------------------------------------------------------------------------------------------------

def digits_learner(
    bs:int=64, # Batch size per process: one step sees `bs * world_size` samples
    seed:int=42, # Seed of the initial weights, the same on every rank
    cpu:bool=False # Keep the batches on the CPU
)->Learner:
    "A `Learner` for `small_cnn` on the offline digits, built the same way on every rank"
    set_seed(seed, reproducible=True)
    dls = digits_dls(bs=bs, device='cpu' if cpu else None)
    return Learner(dls, small_cnn(), loss_func=CrossEntropyLossFlat(), metrics=accuracy)

def fit_distributed(
    learn:Learner, # The learner, built the same way on every rank
    epochs:int=2, # Epochs of one-cycle training
    lr:float=1e-2, # Maximum learning rate
    cbs:list|None=None, # Callbacks for this fit: the mixing callback
    seed:int=42, # Rank `r` draws its mixing with seed `seed + r`
    cpu:bool=False, # Train on the CPU over gloo instead of on GPUs over NCCL
    timeout:float=120. # Seconds a rank waits for the others in a collective before it fails
)->Learner:
    "`learn.fit_one_cycle` inside `learn.distrib_ctx`: one shard of each batch per process"
    if cpu: use_cpu_broadcast()
    pg = InitProcessGroupKwargs(backend='gloo' if cpu else 'nccl', timeout=timedelta(seconds=timeout))
    # SyncBatchNorm runs on CUDA only
    with learn.distrib_ctx(sync_bn=not cpu, cpu=cpu, kwargs_handlers=[pg]):
        set_seed(seed + rank_distrib())  # each rank draws its own λ and partners
        learn.fit_one_cycle(epochs, lr, cbs=cbs)
    return learn

@contextmanager
def rank_errors():
    "Say which rank failed, and re-raise"
    try: yield
    except BaseException as e:
        # on a line of its own: a progress bar may be half-drawn
        print(f"\nrank {rank_distrib()}/{max(num_distrib(), 1)} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        raise

@record  # under torchrun, the failing rank's traceback goes into the launcher's error report
@call_parse
def main(
    mix:str='mixup', # 'none', 'mixup', 'cutmix' or 'cutmixup'
    alpha:float=None, # Beta concentration (default: the callback's)
    epochs:int=8, # Epochs of one-cycle training
    lr:float=1e-2, # Maximum learning rate
    bs:int=64, # Batch size per process
    seed:int=42, # Random seed
    cpu:bool=False, # Train on the CPU even if there are GPUs (always, when there are none)
    timeout:float=120. # Seconds a rank waits for the others before it fails
):
    "Train a small CNN on the offline digits with a mixing callback, on every process `torchrun` or `accelerate launch` starts"
    cpu = cpu or not torch.cuda.is_available()
    with rank_errors():
        learn = digits_learner(bs, seed, cpu)
        fit_distributed(learn, epochs, lr, make_mixer(mix, alpha), seed, cpu, timeout)
    vals = dict(zip(learn.recorder.metric_names[2:-1], learn.recorder.values[-1][1:]))
    print(f"rank {rank_distrib()}/{max(num_distrib(), 1)}: " + ', '.join(f'{k} {v:.4f}' for k,v in vals.items()), flush=True)
