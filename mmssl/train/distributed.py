"""torch.distributed helpers: start from torchrun's environment, gather with gradients, rank queries, and
cross-rank BatchNorm for the methods whose heads (or CNN encoders) normalise over the batch."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["init_distributed", "is_distributed", "rank", "world_size", "all_gather_with_grad", "sync_batchnorm"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_distributed(device: torch.device) -> bool:
    """Joins the process group that torchrun describes (WORLD_SIZE > 1): NCCL on GPU, gloo on CPU.

    Returns True when running distributed. The CUDA device is chosen from LOCAL_RANK.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns each rank the gradient of its own slice (summed over ranks)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D401 - autograd signature
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss depends on every slice: sum the contributions
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n:(dist.get_rank() + 1) * n]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenates `x` (B, ...) from every rank along dim 0, keeping gradients to the local slice.

    Needed by contrastive losses whose negatives come from all ranks (SimCLR: 2(N*world - 1) negatives).
    Without a process group it returns `x`.
    """
    return _GatherWithGrad.apply(x) if is_distributed() else x


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def sync_batchnorm(method: nn.Module, device: torch.device) -> nn.Module:
    """Turns every BatchNorm of `method` into `SyncBatchNorm` for a multi-process run on an accelerator.

    The papers normalise over the global batch: BYOL's cross-replica BN, SimCLR's `global_bn`, and MoCo v3 and
    DINO call `convert_sync_batchnorm` on the whole model (heads, momentum/teacher copies, CNN encoders); with
    per-rank BN a head of a 4096 batch on 64 GPUs would see 64 samples. Call it before wrapping in DDP.
    Conversion keeps the Parameter and buffer objects and the state-dict keys, so optimisers, EMA updates and
    checkpoints are unaffected.

    Left alone (returned as is):
    - one process (`world_size() == 1`): plain BN already sees the whole batch;
    - a CPU device: torch's SyncBatchNorm raises on CPU tensors once a process group exists, so gloo runs keep
      per-rank statistics (and the CPU tests check the conversion without running it);
    - a method with `sync_batchnorm = False`: MoCo v2's shuffle-BN needs per-rank statistics of shuffled keys.

    Args:
        method: the method module (not yet wrapped).
        device: the device it runs on.

    Returns:
        `method`, its BatchNorm layers replaced in place where conversion applies.
    """
    if world_size() <= 1 or device.type == "cpu" or not getattr(method, "sync_batchnorm", True):
        return method
    if not _has_batchnorm(method):
        return method
    return nn.SyncBatchNorm.convert_sync_batchnorm(method)
