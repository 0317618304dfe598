"""Pooled features of frozen encoders, one function per kind of encoder, for the k-NN and linear probes.

An `Extractor` maps a collated batch, the device stage's output for it and the evaluation inputs to one feature
per sample (B, D); the loaders that produce those batches are the evaluation recipes' (`recipes.eval_data`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from mmssl.config import ConfigError
from mmssl.eval.inputs import EvalInputs
from mmssl.models.cpc_audio import DOWNSAMPLING, CPCAudioEncoder

__all__ = ["Extractor", "pooled_extractor", "real_frames", "valid_frames"]

# (collated batch, device-stage output, inputs) -> features (B, D)
Extractor = Callable[[Mapping[str, Any], Mapping[str, Any], EvalInputs], Tensor]


def real_frames(lengths: Tensor, total: int) -> Tensor:
    """Frames of 160 samples (10 ms) that hold real audio in clips of `lengths` samples, at least one, at most
    `total` (a short clip is zero-padded at its end)."""
    return (lengths // DOWNSAMPLING).clamp(1, total)


def valid_frames(batch: Mapping[str, Any], total: int, device: torch.device) -> Tensor:
    """(B, T) True where a CPC frame holds real audio."""
    count = real_frames(batch["audio_len"].to(device).reshape(-1), total)  # (B,)
    return torch.arange(total, device=device)[None] < count[:, None]


def pooled_extractor(encoder: nn.Module) -> Extractor:
    """The pooled feature (B, D) of an encoder: a `TokenEncoder`'s [CLS] (or mean token), a CNN's mean over its
    feature map, CPC's context vectors c_t averaged over the clip's real frames."""
    if isinstance(encoder, CPCAudioEncoder):
        def cpc(batch: Mapping[str, Any], ready: Mapping[str, Any], inputs: EvalInputs) -> Tensor:
            c = encoder(ready["waveform"]).c  # (B, T, H)
            valid = valid_frames(batch, c.shape[1], c.device).unsqueeze(-1).to(c.dtype)  # (B, T, 1)
            return (c * valid).sum(1) / valid.sum(1)
        return cpc

    def pooled(batch: Mapping[str, Any], ready: Mapping[str, Any], inputs: EvalInputs) -> Tensor:
        out = encoder(ready[inputs.spec.name])
        if hasattr(out, "pooled"):  # TokenEncoder and CNNEncoder return `Encoded`
            return out.pooled
        if isinstance(out, Tensor) and out.dim() > 2:
            return out.flatten(2).mean(-1)  # (B, D, *grid) -> (B, D): dense encoders, averaged over positions
        if isinstance(out, Tensor) and out.dim() == 2:
            return out
        raise ConfigError(f"{type(encoder).__name__} returns {type(out).__name__}, not a pooled or dense feature")
    return pooled
