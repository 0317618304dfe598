"""Exporting a trained encoder: as a timm ViT checkpoint (images), or as a state dict with its token spec.

timm format: the linear patch embedding becomes timm's conv weight (our patch vectors are laid out (p, q, C),
conv weights are (C, p, q)), the fixed sin-cos positions become `pos_embed` with the [CLS] slot, and an untrained
zero classifier head is added so that `timm.create_model(name, pretrained=True,
pretrained_cfg_overlay=dict(file=OUT))` loads the file with timm's default 1000-class head.

mmssl format: the encoder's own state dict, with the encoder config and the modality spec as safetensors
metadata (JSON), for video, audio, depth and semantic-map encoders that timm has no model for.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmssl.eval.encoders import load_encoder
from mmssl.models import TokenEncoder
from mmssl.train.checkpoint import load_checkpoint

__all__ = ["encoder_from_checkpoint", "timm_state_dict", "export_encoder"]


def encoder_from_checkpoint(path: str | Path) -> tuple[TokenEncoder, dict[str, Any]]:
    """Rebuilds the encoder of a pretraining checkpoint (or run folder) with its trained weights, and its config."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    encoder = load_encoder(path)
    return encoder, load_checkpoint(path)["config"]["method"]["encoder"]


def timm_state_dict(encoder: TokenEncoder, *, num_classes: int = 1000) -> dict[str, Tensor]:
    """The encoder's weights under timm's VisionTransformer names (image encoders with [CLS] only)."""
    spec = encoder.modality
    if spec.categorical or len(spec.patch) != 2 or encoder.cls_token is None:
        raise ValueError(f"timm export needs an image-like encoder with [CLS]; this one reads {spec.name!r} tokens "
                         f"(use --format mmssl)")
    p, q = spec.patch
    sd = {k: v.detach().clone() for k, v in encoder.state_dict().items() if not k.startswith("patch_embed.")}
    w = encoder.patch_embed.proj.weight.detach()  # (D, p*q*C), patch vectors laid out (p, q, C)
    sd["patch_embed.proj.weight"] = w.reshape(encoder.dim, p, q, spec.channels).permute(0, 3, 1, 2).contiguous()
    sd["patch_embed.proj.bias"] = encoder.patch_embed.proj.bias.detach().clone()
    pos = encoder.positions(spec.grid, w)  # (N, D) fixed table of the default grid
    sd["pos_embed"] = torch.cat([torch.zeros(1, encoder.dim), pos.float()], dim=0).unsqueeze(0)  # (1, 1+N, D)
    if num_classes:
        sd["head.weight"] = torch.zeros(num_classes, encoder.dim)
        sd["head.bias"] = torch.zeros(num_classes)
    return sd


def export_encoder(checkpoint: str | Path, out: str | Path, *, format: str = "timm") -> Path:
    """Writes the encoder of `checkpoint` to `out` (.safetensors) in "timm" or "mmssl" format."""
    from safetensors.torch import save_file

    encoder, enc_cfg = encoder_from_checkpoint(checkpoint)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if format == "timm":
        save_file(timm_state_dict(encoder), str(out), metadata={"timm_name": encoder.name})
    elif format == "mmssl":
        spec = dataclasses.asdict(encoder.modality)
        sd = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
        save_file(sd, str(out), metadata={"encoder": json.dumps(enc_cfg), "modality": json.dumps(spec)})
    else:
        raise ValueError(f"unknown export format {format!r}; choose timm or mmssl")
    return out
