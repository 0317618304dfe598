"""Frozen encoders for evaluation: loading from a checkpoint, and dense-feature adapters.

A checkpoint is a `torch.save`d dict with "config" (the resolved run config, whose `method.encoder` is the
encoder's `_component_` mapping) and "model" (the method's state dict, encoder parameters under "encoder.").
A dense adapter turns frames (B, 3, H, W) in [0, 1] into a feature grid (B, D, H / stride, W / stride).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.config import ConfigError, apply_overrides, instantiate
from mmssl.modalities import Modality, get_modality
from mmssl.models.encoder import TokenEncoder
from mmssl.train.checkpoint import load_checkpoint

__all__ = ["DenseFeatures", "ViTFeatures", "CNNFeatures", "PixelFeatures", "load_encoder", "dense_features",
           "read_checkpoint", "checkpoint_encoder_config"]

PREFIX = "encoder."


class DenseFeatures(Protocol):
    """Frames (B, 3, H, W) in [0, 1] -> features (B, D, H / stride, W / stride)."""

    stride: int

    def __call__(self, frames: Tensor) -> Tensor: ...


def read_checkpoint(checkpoint: str | Path) -> Mapping:
    """A checkpoint dict ("config": the run's resolved config, "model": the method's state dict), checked."""
    path = Path(checkpoint)
    try:
        ckpt = load_checkpoint(path)  # the training side's reader: a missing file is FileNotFoundError
    except ValueError as err:  # unreadable: the user's file to fix, one line
        raise ConfigError(f"{path}: cannot read checkpoint: {err}") from None
    if not isinstance(ckpt, Mapping) or "model" not in ckpt:
        raise ConfigError(f"{path}: a checkpoint must be a dict with 'config' and 'model'")
    return ckpt


def checkpoint_encoder_config(checkpoint: str | Path, ckpt: Mapping | None = None) -> dict:
    """The `_component_` mapping of a checkpoint's encoder (`config.method.encoder`)."""
    ckpt = read_checkpoint(checkpoint) if ckpt is None else ckpt
    try:
        return dict(ckpt["config"]["method"]["encoder"])
    except (KeyError, TypeError):
        raise ConfigError(f"{checkpoint}: no config.method.encoder in the checkpoint; pass the encoder config") \
            from None


def load_encoder(checkpoint: str | Path | None, encoder_config: Mapping | None = None, *,
                 overrides: Sequence[str] = (), random_init: bool = False, seed: int = 0) -> nn.Module:
    """Builds an encoder in eval mode, with a checkpoint's weights or randomly initialised.

    Args:
        checkpoint: path of a checkpoint, or None for a random init from `encoder_config`.
        encoder_config: the encoder's `_component_` mapping; None takes `config.method.encoder` of the checkpoint.
        overrides: `key=value` changes to the encoder config (keys relative to it, e.g. "depth=4").
        random_init: build the checkpoint's architecture without its weights (the baseline every probe prints
            beside the trained encoder).
        seed: the random init's seed (drawn in a private RNG scope: the caller's random state is left as it was),
            so two runs of an evaluation print the same baseline.
    """
    state = None
    if checkpoint is not None:
        ckpt = read_checkpoint(checkpoint)
        if encoder_config is None:
            encoder_config = checkpoint_encoder_config(checkpoint, ckpt)
        if not random_init:
            state = {k[len(PREFIX):]: v for k, v in ckpt["model"].items() if k.startswith(PREFIX)}
            if not state:
                raise ConfigError(f"{checkpoint}: no '{PREFIX}*' parameters in the checkpoint's model")
    if encoder_config is None:
        raise ConfigError("no checkpoint and no encoder config: nothing to build an encoder from")
    encoder_config = apply_overrides(dict(encoder_config), overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = instantiate(encoder_config, where="method.encoder")
    if state is not None:
        try:
            missing, unexpected = encoder.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatches raise even when not strict
            first = str(err).split("\n\t")[1] if "\n\t" in str(err) else str(err)
            raise ConfigError(f"{checkpoint}: encoder weights do not fit config.method.encoder ({first})") from None
        if missing or unexpected:
            raise ConfigError(f"{checkpoint}: encoder weights do not fit config.method.encoder "
                              f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    return encoder.eval().requires_grad_(False)


class ViTFeatures:
    """Patch-token features of a `TokenEncoder` on its modality's grid (stride = patch size)."""

    def __init__(self, encoder: TokenEncoder) -> None:
        if len(encoder.modality.patch) != 2:
            raise ValueError(f"dense image features need a 2-D modality, got {encoder.modality.name!r}")
        self.encoder, self.modality = encoder, encoder.modality
        self.stride = int(encoder.modality.patch[0])

    @torch.no_grad()
    def __call__(self, frames: Tensor) -> Tensor:
        x = self.modality.normalize(frames)
        h, w = x.shape[-2:]
        p = self.modality.patch
        if h % p[0] or w % p[1]:
            raise ValueError(f"frame size {h}x{w} is not a multiple of the patch {p}; resize first")
        return self.encoder.forward_dense(self.modality.tokenize(x))  # (B, D, h/p, w/p)


class CNNFeatures:
    """Any module that maps normalised frames (B, 3, H, W) to (B, D, h, w); the stride is measured once.

    Modules with a `forward_dense` (such as `CNNEncoder`, whose `forward` returns `Encoded`) are called through it.
    """

    def __init__(self, module: nn.Module, modality: str | Modality = "image", stride: int | None = None) -> None:
        self.module, self.modality = module, get_modality(modality)
        self.call = getattr(module, "forward_dense", module)
        if stride is None:
            param = next(module.parameters(), None)
            probe = torch.zeros(2, 3, 64, 64, device=None if param is None else param.device)
            with torch.no_grad():
                out = self.call(probe)
            if out.dim() != 4:
                raise ValueError(f"{type(module).__name__} returns shape {tuple(out.shape)}, not (B, D, h, w)")
            stride = max(1, round(64 / out.shape[-1]))
        self.stride = int(stride)

    @torch.no_grad()
    def __call__(self, frames: Tensor) -> Tensor:
        return self.call(self.modality.normalize(frames))


class PixelFeatures:
    """Raw-pixel baseline: normalised colour averaged over stride x stride cells (3 features per cell)."""

    def __init__(self, stride: int = 8, modality: str | Modality = "image") -> None:
        self.stride, self.modality = int(stride), get_modality(modality)

    def __call__(self, frames: Tensor) -> Tensor:
        return F.avg_pool2d(self.modality.normalize(frames), self.stride)  # (B, 3, H/s, W/s)


def dense_features(encoder: nn.Module) -> DenseFeatures:
    """The dense adapter of an encoder: `ViTFeatures` for a `TokenEncoder`, else `CNNFeatures`."""
    if isinstance(encoder, TokenEncoder):
        return ViTFeatures(encoder)
    return CNNFeatures(encoder, getattr(encoder, "modality", "image"))
