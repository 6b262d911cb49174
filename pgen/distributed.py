"""Data-parallel training under ``torchrun``: PyTorch's DistributedDataParallel, gloo on CPU, nccl on GPU.

``torchrun --nproc-per-node K -m pgen train ...`` starts K processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; `setup` joins them into one process group. Every rank
draws the same seeded order of the training set and takes its contiguous slice of each global
batch (``--batch-size`` stays the global batch); the nets are wrapped in DistributedDataParallel
for the training step, so gradients are averaged across ranks as one process would compute them
on the whole batch. Random draws inside a step (latent noise, the VAE's reparameterisation,
dropout masks) go through `normal` / `uniform`, which draw the global batch's values on every
rank and keep the rank's rows: with the same seed and global batch, K processes follow the
single-process run (up to the order of floating-point sums). Rank 0 alone talks to MLflow and
writes checkpoints; step metrics are averaged across ranks before it logs them.

Batch-norm layers keep per-rank statistics on the CPU (PyTorch's SyncBatchNorm needs CUDA); on
GPUs they are converted to SyncBatchNorm.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch

from pgen.errors import PgenError


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = World(0, 1, 0)
_world = SINGLE
_sharding = False  # inside a training step: random draws are sliced to this rank's rows


def setup() -> World:
    """Join the process group ``torchrun`` describes (once); a single process is `SINGLE`."""
    global _world
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    _world = World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return _world


def teardown(clean: bool = True) -> None:
    """Leave the process group. After a clean finish every rank first waits for the others at a barrier: a rank
    that destroys its group and exits while rank 0 is still logging can abort in gloo's teardown (SIGABRT,
    "terminate called without an active exception"). After an error the group is left to the process's exit,
    since a destroy while a peer is still inside a collective can hang."""
    global _world
    if _world.size > 1:
        import torch.distributed as dist

        if clean and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    _world = SINGLE


def world() -> World:
    return _world


def local_batch(batch_size: int) -> int:
    if batch_size % _world.size:
        raise PgenError(f"--batch-size {batch_size} is not divisible by the {_world.size} processes; "
                        f"use a multiple of {_world.size} (it is the global batch)")
    return batch_size // _world.size


def rank_slice(n: int) -> slice:
    """This rank's contiguous part of a global batch of ``n``."""
    k = n // _world.size
    return slice(_world.rank * k, (_world.rank + 1) * k)


# --------------------------------------------------------------------------- random draws inside a step


@contextmanager
def sharded() -> Iterator[None]:
    """Random draws of `normal` / `uniform` are the global batch's, sliced to this rank, in the block."""
    global _sharding
    _sharding, before = _world.size > 1, _sharding
    try:
        yield
    finally:
        _sharding = before


def normal(shape, rng: torch.Generator, device, dtype=None) -> torch.Tensor:
    return _draw(torch.randn, shape, rng, device, dtype)


def uniform(shape, rng: torch.Generator, device, dtype=None) -> torch.Tensor:
    return _draw(torch.rand, shape, rng, device, dtype)


def _draw(fn, shape, rng, device, dtype) -> torch.Tensor:
    shape = tuple(shape)
    if not _sharding:
        return fn(shape, generator=rng, device=device, dtype=dtype)
    n = shape[0]
    full = fn((n * _world.size, *shape[1:]), generator=rng, device=device, dtype=dtype)
    return full[_world.rank * n : (_world.rank + 1) * n]


# --------------------------------------------------------------------------- nets and metrics


def wrap(nets: Mapping[str, torch.nn.Module], device: torch.device) -> dict[str, torch.nn.Module]:
    """The nets as DistributedDataParallel modules (the same parameters), for the training step."""
    if _world.size <= 1:
        return dict(nets)
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = {}
    for k, net in nets.items():
        if not any(p.requires_grad for p in net.parameters()):
            out[k] = net  # nothing to train (e.g. a frozen decoder)
            continue
        if device.type == "cuda":
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        out[k] = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    return out


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    return getattr(net, "module", net)


def mean(values: Mapping[str, float]) -> dict[str, float]:
    """Step metrics averaged over the ranks (every rank must call this at the same point)."""
    if _world.size <= 1 or not values:
        return dict(values)
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":  # nccl reduces CUDA tensors only
        t = t.to(f"cuda:{_world.local_rank}")
    dist.all_reduce(t)
    return dict(zip(keys, (t / _world.size).tolist()))
