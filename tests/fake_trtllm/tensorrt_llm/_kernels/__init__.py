"""What the real plugins do in CUDA (cpp/tensorrt_llm/plugins, cpp/tensorrt_llm/kernels), in torch, plus the one
piece of "device memory" they need: KV-cache pools the runtime allocates and hands to the engine as integer
addresses (``host_kv_cache_pool_pointers``), resolved here."""

from __future__ import annotations

import itertools
import threading

import torch

_pools: dict[int, torch.Tensor] = {}
_lock = threading.Lock()
_addresses = itertools.count(0x1000, 0x1000)


def register_pool(pool: torch.Tensor) -> int:
    """An address for ``pool`` (the runtime's cudaMalloc)."""
    with _lock:
        address = next(_addresses)
        _pools[address] = pool
    return address


def release_pool(address: int) -> None:
    with _lock:
        _pools.pop(address, None)


def resolve_pool(address: int) -> torch.Tensor:
    pool = _pools.get(int(address))
    if pool is None:
        raise RuntimeError(f"KV-cache pool pointer {address:#x} does not point at a pool the runtime allocated")
    return pool
