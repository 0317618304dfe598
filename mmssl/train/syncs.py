"""Counting the places where the host waits for the device: the check that a training step never stalls a GPU.

A step that reads a value on the host (`.item()`, `bool(t)`, a boolean-mask index, `nonzero`, a tensor made from
host values) makes the CPU wait until the GPU has finished everything queued before it; kernel launches stop
running ahead and the GPU idles between steps. `count_host_syncs` finds such ops at the dispatcher on any
device, so the CPU tests see what would stall a GPU; `cuda_syncs` asks CUDA's own sync debug mode on a GPU.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch import Tensor

__all__ = ["count_host_syncs", "cuda_syncs", "SYNC_OPS"]

# ops whose result size or value the host must read from the device, and `lift_fresh`: a tensor made from host
# values (`torch.tensor(...)`), which on a GPU is a copy that waits for the work queued before it
SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal", "unique", "_unique2",
            "item", "lift_fresh")


def count_host_syncs(fn: Callable[[], Any]) -> list[str]:
    """The ops run by `fn` that need the host to wait for the device (`.item()`, `.tolist()`, boolean indexing,
    nonzero, tensors made from host values...).

    Counted at the dispatcher on any device, so the CPU tests see the ops that would stall a GPU. Autograd runs
    the backward of CUDA tensors in its own thread, out of sight of this counter: on CUDA use `cuda_syncs`.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    found: list[str] = []
    tolist = Tensor.tolist  # reads every value on the host, without going through the dispatcher

    def counted_tolist(self: Tensor):
        found.append("tolist")
        return tolist(self)

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            bool_index = name in ("index", "index_put", "index_put_") and any(
                isinstance(i, Tensor) and i.dtype == torch.bool for i in (args[1] or ()))
            if name in SYNC_OPS or bool_index:
                found.append(str(func))
            return func(*args, **(kwargs or {}))

    Tensor.tolist = counted_tolist
    try:
        with Counter():
            fn()
    finally:
        Tensor.tolist = tolist
    return found


def cuda_syncs(fn: Callable[[], Any]) -> int:
    """Synchronising CUDA calls made by `fn`, as `torch.cuda.set_sync_debug_mode` reports them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)
