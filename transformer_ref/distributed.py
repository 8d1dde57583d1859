"""Data-parallel training with ``torchrun``: one process per GPU (or per CPU slot), each holding a
full copy of the model and a disjoint shard of every global batch.

How it works (PyTorch ``DistributedDataParallel``, Li et al. 2020): every process computes the
loss and the gradients on its shard; during ``backward()`` DDP averages the gradients over the
processes (an all-reduce), so every copy takes the same optimizer step and the copies stay equal.
With equal shards and a loss that is a mean over the batch, the averaged gradient is exactly the
gradient of the loss over the whole global batch: W processes train like one process with a W
times larger batch.

- ``init_distributed()``: joins the process group that ``torchrun`` describes in the environment
  (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), with NCCL on GPUs and
  gloo on CPU, and returns a ``DistributedContext``. Without ``torchrun`` it returns a
  single-process context (rank 0 of 1), so one script serves both.
- ``wrap_model(model, ctx)``: ``DistributedDataParallel`` when there is a process group, else the
  model itself; ``unwrap_model`` undoes it (checkpoints hold the plain model's state).
- ``ShardedBatches``: what ``torch.utils.data.DistributedSampler`` does for a ``Dataset``, for the
  in-memory tensors of this course: every process draws the same seeded permutation per epoch and
  keeps its own contiguous slice of each global batch. Its ``state_dict()`` (epoch, position) lets
  a resumed run continue with exactly the batches an uninterrupted one would have seen.
- ``get_rank()``, ``get_world_size()``, ``is_main_process()``, ``all_mean``, ``all_gather_object``,
  ``barrier``: small helpers that also work (as no-ops) in a single process.

``transformer_ref.train.fit`` uses these: gradient accumulation without a gradient all-reduce on
the accumulation steps (``no_sync``), the loss averaged over processes, and progress bars, log lines
and checkpoints on rank 0 only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from transformer_ref._checks import check_positive_int, check_same_rows

TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""The environment variables ``torchrun`` sets in every process it starts."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``rank`` (0 .. world_size - 1 over all nodes), ``local_rank``
    (index on this node, which picks the GPU), ``world_size`` (number of processes), ``device``
    and ``backend`` ("nccl", "gloo", or None for a single process without a process group)."""
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs, shows progress bars and writes checkpoints."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the environment holds every variable ``torchrun`` sets (``TORCHRUN_ENV``)."""
    return all(name in os.environ for name in TORCHRUN_ENV)


def init_distributed(backend: str | None = None) -> DistributedContext:
    """Join the process group described by torchrun's environment variables and return a context.

    backend: default "nccl" when CUDA is available, else "gloo" (CPU). On CUDA each process uses
        GPU ``LOCAL_RANK`` (``torch.cuda.set_device``).
    Not launched by torchrun: no process group; rank 0 of 1 on CUDA, MPS or CPU (the best there is).
    Called again after the group exists, it returns the context of that group.
    """
    if not launched_by_torchrun() and not dist.is_initialized():
        if torch.cuda.is_available():
            device = torch.device("cuda")
        elif torch.backends.mps.is_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
        return DistributedContext(rank=0, local_rank=0, world_size=1, device=device, backend=None)
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend not in dist.Backend.backend_list:
            raise ValueError(f"backend must be one of {dist.Backend.backend_list}; got {backend!r}")
        local_rank = int(os.environ["LOCAL_RANK"])
        device_id = None
        if backend == "nccl":
            if not torch.cuda.is_available():
                raise RuntimeError("backend 'nccl' needs CUDA GPUs; none is visible (use backend='gloo' on CPU)")
            if local_rank >= torch.cuda.device_count():
                raise RuntimeError(f"LOCAL_RANK {local_rank} has no GPU: this node has "
                                   f"{torch.cuda.device_count()}; start at most that many processes per node "
                                   "(torchrun --nproc-per-node)")
            device_id = torch.device("cuda", local_rank)
            torch.cuda.set_device(device_id)
        dist.init_process_group(backend, device_id=device_id)   # reads RANK, WORLD_SIZE, MASTER_*
    backend = dist.get_backend()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    return DistributedContext(rank=dist.get_rank(), local_rank=local_rank,
                              world_size=dist.get_world_size(), device=device, backend=backend)


def shutdown() -> None:
    """Leave the process group (at the end of a torchrun script); a no-op without one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    """This process's rank; 0 without a process group."""
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    """The number of processes; 1 without a process group."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process)."""
    return get_rank() == 0


def barrier() -> None:
    """Wait until every process gets here; a no-op without a process group."""
    if dist.is_initialized():
        dist.barrier()


def all_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over the processes (a new tensor; ``value`` itself without a group)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)        # AVG is NCCL-only; SUM works on gloo too
    return total / dist.get_world_size()


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process (picklable objects); ``[obj]`` alone."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def wrap_model(model: nn.Module, ctx: DistributedContext, **ddp_kwargs: Any) -> nn.Module:
    """Move ``model`` to ``ctx.device`` and wrap it in ``DistributedDataParallel`` when a process
    group exists (the model itself otherwise). DDP copies rank 0's parameters to every process, so
    the copies start equal. ``ddp_kwargs`` go to DDP (e.g. ``find_unused_parameters=True``)."""
    model = model.to(ctx.device)
    if not dist.is_initialized():
        return model
    device_ids = [ctx.device] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside a ``DistributedDataParallel`` wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


class ShardedBatches:
    """Global batches of aligned tensors, split into ``grad_accum`` micro-batches and each of those
    into equal contiguous shards, one per process.

    ``for batch in ShardedBatches(x, y, batch_size=64, seed=0)`` yields tuples ``(x[idx], y[idx])``.
    On each pass (epoch e), ``order = randperm(N)`` is drawn from a generator seeded with ``seed + e``
    (the same on every process); global batch b, the rows of optimisation step b, is
    ``order[b*B:(b+1)*B]``; its micro-batch m is the m-th of ``grad_accum`` equal slices, and this
    process keeps the ``rank``-th of ``world_size`` equal slices of that. The shards of a global
    batch are disjoint and together are the global batch, so W processes with k accumulation steps
    see, step by step, the rows one process sees with one batch of B.

    batch_size: the global batch B per optimisation step (over all processes and accumulation steps);
        must be divisible by ``grad_accum * world_size``. The last, incomplete global batch of a pass
        is dropped, so every step has B rows (whatever the world size, the passes line up).
    grad_accum: micro-batches per global batch; give ``fit`` the same ``grad_accum``.
    rank, world_size: default from the process group (0 and 1 without one).
    ``len()``: micro-batches per pass. ``state_dict()`` / ``load_state_dict()``: the epoch and the
    position in it, so a resumed run continues where the interrupted one stopped; iterating again
    after a finished pass starts the next epoch.
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int, grad_accum: int = 1, seed: int = 0,
                 shuffle: bool = True, rank: int | None = None, world_size: int | None = None) -> None:
        check_same_rows(tensors, "ShardedBatches")
        self.tensors = tensors
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.grad_accum = check_positive_int(grad_accum, "grad_accum")
        self.world_size = get_world_size() if world_size is None else check_positive_int(world_size, "world_size")
        self.rank = get_rank() if rank is None else rank
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be an int in [0, {self.world_size}); got {self.rank!r}")
        if batch_size % (self.grad_accum * self.world_size):
            raise ValueError(f"batch_size (the global batch, {batch_size}) must be divisible by grad_accum x "
                             f"processes = {self.grad_accum} x {self.world_size} so that every process gets "
                             "equal shards")
        if tensors[0].size(0) < batch_size:
            raise ValueError(f"batch_size ({batch_size}) must be at most the number of rows "
                             f"({tensors[0].size(0)}); a pass would hold no full batch")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int; got {seed!r}")
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.position = 0, 0                         # position: micro-batches done this pass
        self._order: tuple[int, torch.Tensor] | None = None     # (epoch, permutation) of the last pass

    def __len__(self) -> int:
        return self.tensors[0].size(0) // self.batch_size * self.grad_accum

    def global_indices(self, epoch: int, batch: int) -> torch.Tensor:
        """Row indices of global batch ``batch`` of pass ``epoch`` (all processes and micro-batches
        together, in order), shape (B,)."""
        if self._order is None or self._order[0] != epoch:
            n = self.tensors[0].size(0)
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._order = (epoch, torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n))
        return self._order[1][batch * self.batch_size:(batch + 1) * self.batch_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if self.position >= len(self):                  # the previous pass is finished
            self.epoch, self.position = self.epoch + 1, 0
        shard = self.batch_size // (self.grad_accum * self.world_size)
        while self.position < len(self):
            batch, micro = divmod(self.position, self.grad_accum)
            start = (micro * self.world_size + self.rank) * shard
            idx = self.global_indices(self.epoch, batch)[start:start + shard]
            self.position += 1                          # counted before the yield: a checkpoint
            yield tuple(t[idx.to(t.device)] for t in self.tensors)   # taken now resumes after it

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "position", "seed", "batch_size"}``: the same on every process. The position
        counts global batches (steps), so a run may resume with another world size or grad_accum."""
        if self.position % self.grad_accum:
            raise RuntimeError(f"ShardedBatches is in the middle of a global batch (micro-batch "
                               f"{self.position % self.grad_accum} of {self.grad_accum}); save after a whole step")
        return {"epoch": self.epoch, "position": self.position // self.grad_accum,
                "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from ``state``; its seed and global batch size must match this iterator's."""
        for key in ("seed", "batch_size"):
            if state[key] != getattr(self, key):
                raise ValueError(f"the saved batches have {key}={state[key]} but these have "
                                 f"{key}={getattr(self, key)}; a resumed run needs the same data order")
        self.epoch, self.position = int(state["epoch"]), int(state["position"]) * self.grad_accum
