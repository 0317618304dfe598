"""Activation checkpointing of transformer blocks: recompute each block's activations in the backward pass.

Large batches of MAE-style training are limited by the activations the decoder keeps for the backward pass (the
decoder runs on every token). `checkpoint_blocks` makes every block found in a `blocks` container of the model
(the TokenEncoder trunk, the decoders) store only its input and recompute the rest when gradients are needed:
about a third more compute for a fraction of the memory. Parameter names and the state dict are unchanged, so
checkpoints load either way.

This module trades memory for compute inside one step; `mmssl.train.checkpoint` writes and reads checkpoint files
between runs. They share only PyTorch's word "checkpoint", so the module is named for what it does (recompute).
The function keeps torch's name (`torch.utils.checkpoint`), the one users search for.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["checkpoint_blocks"]


def _recomputed(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():  # evaluation: nothing is stored for a backward pass anyway
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_blocks(model: nn.Module) -> int:
    """Wraps the forward of every block in every `blocks` ModuleList / Sequential of `model`; returns how many.

    Blocks already wrapped are left alone, so calling it twice is harmless. Without gradients (evaluation) the
    wrapped blocks run as before.
    """
    count = 0
    for module in model.modules():
        blocks = getattr(module, "blocks", None)
        if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
            continue
        for block in blocks:
            if getattr(block, "_checkpointed", False):
                continue
            # an instance attribute shadows the class's forward; the parameters stay where they were
            block.forward = partial(_recomputed, block.forward)
            block._checkpointed = True
            count += 1
    return count
