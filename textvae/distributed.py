"""Data-parallel training under ``torchrun``: the process group, batch sharding and cross-rank sums.

``torchrun --nproc_per_node N -m textvae train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`setup` joins them in one process group
(``gloo`` on the CPU, ``nccl`` on CUDA, each rank on GPU ``LOCAL_RANK``). Without those
variables (a plain ``textvae train``) there is no process group and world size is 1.

The semantics a user can rely on:

- ``train.batch_size`` is the *global* batch. Every rank builds the same length-bucketed,
  shuffled batches; rank r trains on its contiguous share of each (:func:`shard`), so N
  ranks see exactly the batches of one process.
- Each rank's loss is scaled by ``N · b_r / B`` (:func:`loss_scale`), so that DDP's average of
  the ranks' gradients is the gradient of the global batch mean, even when B does not split evenly.
- The reparameterisation noise of the global batch is drawn on every rank from the same
  random stream, and each rank takes its rows (:func:`global_noise`); everything else random
  in a step (dropout) draws from a stream of its own rank. So a model without dropout or a
  critic makes the same updates as one process, up to the order of floating-point sums.
- Only rank 0 writes the run directory; the logged sums are summed over ranks first (:func:`all_sum`).
"""

from __future__ import annotations

import atexit
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import TextVAEError


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank, world size and local rank (1 process: 0, 1, 0)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched() -> bool:
    """True under ``torchrun`` (or any launcher that sets ``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def main_process() -> bool:
    """Rank 0 under torchrun, or a plain process: the one that writes shared files."""
    return int(os.environ.get("RANK", "0")) == 0


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group when launched by ``torchrun``; returns the world and this rank's device."""
    if not launched():
        return World(), device
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise TextVAEError(f"WORLD_SIZE is set but {name} is not: launch with torchrun")
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(teardown, world)
    if not world.main:  # one voice: rank 0 logs; the others report errors only
        logging.getLogger("textvae").setLevel(logging.ERROR)
    return world, device


def teardown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard_rows(batch_size: int, world: World) -> slice:
    """Rank ``world.rank``'s contiguous rows of a global batch of ``batch_size`` (``torch.tensor_split``'s)."""
    base, extra = divmod(batch_size, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (world.rank < extra))


def shard(batch, world: World):
    """This rank's rows of a global :class:`~textvae.data.Batch` (the whole batch in one process)."""
    if not world.distributed:
        return batch
    return batch.rows(shard_rows(batch.input_ids.size(0), world))


def loss_scale(local_rows: int, global_rows: int, world: World) -> float:
    """The factor on a rank's batch-mean loss that makes DDP's gradient average the global mean's gradient."""
    return world.size * local_rows / global_rows


def global_noise(global_rows: int, dim: int, rows: slice, like: torch.Tensor) -> torch.Tensor:
    """This rank's rows of standard-normal noise drawn for the whole global batch, as one process draws it
    (``Normal.rsample``'s ``normal_`` on a (B, D) tensor). Shape: → (b_r, D)."""
    eps = torch.empty(global_rows, dim, dtype=like.dtype, device=like.device).normal_()
    return eps[rows]


@contextmanager
def rank_stream(world: World, seed: int, step: int):
    """Inside: the random stream of this rank and step (dropout masks differ between ranks); outside, the
    shared stream is untouched, so it stays the same on every rank."""
    if not world.distributed:
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed((seed * 1_000_003 + step) * 1_009 + world.rank)
        yield


def all_sum(values: dict[str, float], world: World, device: torch.device) -> dict[str, float]:
    """``values`` summed over ranks (the same dict in one process)."""
    if not world.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


def broadcast(value, world: World):
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def gather_rows(t: torch.Tensor, world: World, global_rows: int) -> torch.Tensor:
    """Every rank's rows of a global batch of ``global_rows``, concatenated in rank order; the gather is
    differentiable (``torch.distributed.nn.functional.all_gather``) when ``t`` needs a gradient. Ranks
    may hold one row more or less (an uneven split): shares are padded to the largest for the gather."""
    shares = [shard_rows(global_rows, World(r, world.size)) for r in range(world.size)]
    counts = [share.stop - share.start for share in shares]
    padded = torch.cat([t, t.new_zeros(max(counts) - t.size(0), *t.shape[1:])]) if t.size(0) < max(counts) else t
    if t.requires_grad:
        from torch.distributed.nn.functional import all_gather

        with warnings.catch_warnings():  # deprecated in favour of a private module; still the public autograd gather
            warnings.simplefilter("ignore", FutureWarning)
            parts = all_gather(padded)
    else:
        parts = [torch.empty_like(padded) for _ in range(world.size)]
        dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)])


def average_gradients(params: list[torch.nn.Parameter], world: World) -> None:
    """Average the gradients of ``params`` over the ranks in place (the critic's own parameters, which
    live outside the model's DDP wrapper). Every rank holds gradients for the same parameters."""
    grads = [p.grad for p in params if p.grad is not None]
    if not world.distributed or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(part.view_as(g))


def agree(flags: dict[str, bool], world: World, device: torch.device) -> dict[str, bool]:
    """Each flag true on every rank when it is true on any (a stop that one rank's clock or Ctrl-C saw)."""
    return {k: v > 0 for k, v in all_sum({k: float(v) for k, v in flags.items()}, world, device).items()}


def wrap(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` under torchrun; itself otherwise."""
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def gather_dicts(part: dict, world: World) -> dict:
    """The union of every rank's ``part`` (disjoint keys; CPU tensors or other picklable values)."""
    if not world.distributed:
        return part
    parts: list[dict | None] = [None] * world.size
    dist.all_gather_object(parts, part)
    return {k: v for p in parts for k, v in p.items()}
