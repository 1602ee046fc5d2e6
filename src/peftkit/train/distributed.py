"""Data-parallel training on ``torch.distributed``: process group, model wrapping, sharding and
reductions.

peftkit does not launch or coordinate processes itself: ``torchrun`` starts them and sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; this module joins the group it describes (gloo on CPU, nccl on
CUDA) and wraps the model in PyTorch's own DDP or FSDP2 (``fully_shard``).

How a global batch is split: every process builds the same seeded list of micro-batches (the data
order does not depend on the number of processes), and process ``r`` of ``W`` takes rows ``r, r+W,
...`` of each. The loss is normalized by the target tokens of the whole global micro-batch, so the
summed gradient equals that of one process running the whole batch: results do not change with
``W``.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import gc
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError

__all__ = ["Processes", "check_global_batch", "setup", "shard", "wrap"]

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    """Where this process stands among the processes of one run."""

    rank: int = 0
    """This process's index, 0 to world_size - 1."""
    world_size: int = 1
    """How many processes train together."""
    local_rank: int = 0
    """This process's index on its own machine (picks its GPU)."""
    strategy: str = "ddp"
    """ddp or fsdp (only used when world_size > 1)."""

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def sharded(self) -> bool:
        return self.distributed and self.strategy == "fsdp"

    # --- collectives; each is a no-op (or the identity) in a single process ---

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, value: T) -> list[T]:
        """``value`` of every process, in rank order."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on any (e.g. one of them was asked to stop)."""
        return self.sum([float(flag)])[0] > 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def setup(device: str, strategy: str, timeout_minutes: float) -> tuple[Processes, bool]:
    """Join the process group that ``torchrun`` describes, if any.

    Returns this process's :class:`Processes` and whether this call created the group (and so should
    destroy it at the end). A group the caller created itself is used as it is.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not dist.is_initialized():
        return Processes(strategy=strategy), False
    created = False
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise ConfigError(
                "WORLD_SIZE is set but MASTER_ADDR is not; start distributed runs with torchrun "
                "(or peftkit train --nproc N), which sets both"
            )
        cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        dist.init_process_group(
            "nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes)
        )
        created = True
        # A sharded model reaches the group's backend through reference cycles, and the caller keeps
        # the trained model after teardown. Collect the cycles at exit while the interpreter is
        # whole: freed during its shutdown, Gloo's worker threads can abort the process (SIGABRT)
        # after the run has finished.
        atexit.register(gc.collect)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.get_backend() == "nccl":
        torch.cuda.set_device(local_rank)
    return Processes(dist.get_rank(), dist.get_world_size(), local_rank, strategy), created


def teardown(created: bool) -> None:
    if created and dist.is_initialized():
        # The run's DDP or FSDP wrapper may still be alive in a reference cycle; its reducer and
        # Gloo threads must go before the group does, or freeing them at interpreter exit aborts the
        # process (SIGABRT, "terminate called without an active exception") after a run that
        # finished.
        gc.collect()
        dist.destroy_process_group()


def shard(rows: Sequence[T], procs: Processes) -> list[T]:
    """This process's rows of a global batch: every ``world_size``-th, from its rank."""
    return list(rows[procs.rank :: procs.world_size])


def even_shard(count: int, procs: Processes) -> tuple[list[int], int]:
    """Indices of this process's share of ``count`` items, padded (by repeating its first) to the
    same length on every process, and how many of them are its own."""
    own = list(range(procs.rank, count, procs.world_size))
    length = -(-count // procs.world_size)
    padding = own[:1] or [0]
    return own + padding * (length - len(own)), len(own)


def wrap(model: nn.Module, procs: Processes, device: torch.device) -> nn.Module:
    """The module the training step runs: the model itself, DDP around it, or the model fully
    sharded.

    DDP synchronizes only parameters that require gradients, so the frozen base costs nothing in
    communication. FSDP2 shards every parameter (frozen base included) block by block; the adapter
    weights keep their dtype (fp32 unless the model was loaded otherwise). ``fully_shard`` changes
    the model in place, so the returned module is ``model`` itself.
    """
    if not procs.distributed:
        return model
    if procs.strategy == "fsdp":
        return _fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def _block_classes(model: nn.Module) -> set[str]:
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return names


def _fully_shard(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    blocks = _block_classes(model)
    if not blocks:
        raise ConfigError(
            f"train.strategy=fsdp needs to know the model's transformer block class, and "
            f"{type(model).__name__} does not declare _no_split_modules; use strategy: ddp"
        )
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)
    return model


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on accumulation micro-batches but the last."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if enabled:
        yield
    elif isinstance(module, DistributedDataParallel):
        with module.no_sync():
            yield
    elif isinstance(module, FSDPModule):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield


@contextlib.contextmanager
def full_parameters(model: nn.Module) -> Iterator[None]:
    """Inside, a sharded model's parameters are whole on every process (for saving); a no-op
    otherwise.

    Every process must enter it together.
    """
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in sharded:
        module.unshard()
    try:
        yield
    finally:
        for module in sharded:
            module.reshard()


def load_full(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a whole tensor into ``param``, which may be a shard of it (an FSDP2 ``DTensor``)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        full = distribute_tensor(
            full.to(param.device, param.dtype), param.device_mesh, param.placements
        )
    param.copy_(full)


def optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, procs: Processes
) -> dict[str, Any]:
    """The optimizer's state as one process would hold it (gathered from the shards under FSDP)."""
    if not procs.sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True)
    )


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], procs: Processes
) -> None:
    if not procs.sharded:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        model, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )


def check_global_batch(batch_size: int, procs: Processes) -> None:
    """The global micro-batch is split over the processes, so each must get at least one row."""
    if batch_size < procs.world_size:
        raise ConfigError(
            f"train.batch_size={batch_size} is the global micro-batch, split over "
            f"{procs.world_size} processes, so it must be at least {procs.world_size}; raise it "
            f"(and lower train.grad_accum to keep the same global batch)"
        )
