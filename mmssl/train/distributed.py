"""torch.distributed helpers: start from torchrun's environment, gather with gradients, rank queries."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["init_distributed", "is_distributed", "rank", "world_size", "all_gather_with_grad"]


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
