"""Stands in for the NCCL plugins behind ``functional.allreduce`` / ``allgather`` / ``send`` / ``recv``
(cpp/tensorrt_llm/plugins/ncclPlugin): the ranks of one process, each a thread, meet at a barrier.

``allreduce`` sums the group's tensors in rank order (every rank gets the same bytes, as NCCL's ring does);
``allgather`` concatenates them in rank order; ``send``/``recv`` pass a tensor through a mailbox keyed by
(source, destination) rank: the runtime runs pipeline stages in order, so a stage's sends are all posted before the
next stage receives. A rank that fails aborts the barriers, so its peers stop instead of waiting forever.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque

import torch

_local = threading.local()


class World:
    """The communicator of ``world_size`` ranks; :func:`as_rank` binds the calling thread to one of them."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._lock = threading.Lock()
        self._barriers: dict[tuple[int, ...], threading.Barrier] = {}
        self._slots: dict[tuple[int, ...], dict[int, torch.Tensor]] = defaultdict(dict)
        self._mailbox: dict[tuple[int, int], deque] = defaultdict(deque)

    def barrier(self, group: tuple[int, ...]) -> threading.Barrier:
        with self._lock:
            if group not in self._barriers:
                self._barriers[group] = threading.Barrier(len(group), timeout=120)
            return self._barriers[group]

    def abort(self) -> None:
        with self._lock:
            for barrier in self._barriers.values():
                barrier.abort()

    def exchange(self, group: tuple[int, ...], rank: int, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank of ``group`` contributes ``tensor``; all get the contributions in rank order."""
        if rank not in group:
            raise ValueError(f"rank {rank} is not in the communication group {list(group)}")
        barrier = self.barrier(group)
        self._slots[group][rank] = tensor
        barrier.wait()
        gathered = [self._slots[group][member] for member in group]
        barrier.wait()  # nobody overwrites a slot before every rank has read them all
        shapes = {tuple(t.shape) for t in gathered}
        if len(shapes) != 1 or len({t.dtype for t in gathered}) != 1:
            raise ValueError(f"group {list(group)} exchanged tensors of different shapes/dtypes: {shapes}")
        return gathered

    def post(self, source: int, destination: int, tensor: torch.Tensor) -> None:
        self._mailbox[(source, destination)].append(tensor.clone())

    def take(self, source: int, destination: int) -> torch.Tensor:
        queue = self._mailbox[(source, destination)]
        if not queue:
            raise RuntimeError(f"recv on rank {destination}: rank {source} sent nothing")
        return queue.popleft()


def bind(world: World, rank: int) -> None:
    _local.world, _local.rank = world, rank


def current() -> tuple[World, int]:
    world = getattr(_local, "world", None)
    if world is None:
        raise RuntimeError("a collective outside a runtime rank (tensorrt_llm._nccl.bind was not called)")
    return world, _local.rank
