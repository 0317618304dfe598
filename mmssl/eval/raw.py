"""Raw-input baselines for the k-NN and linear probes: what the input alone gives, with no encoder.

A tiny encoder's 72 % k-NN means nothing if raw pixels reach 78 % on the same split, so every probe prints the
raw input's score beside the encoder's:
- images: the normalised image area-averaged to 16 x 16 and flattened (768 values);
- video: the normalised clip area-averaged to 4 x 8 x 8 (time x height x width) and flattened (768 values);
- audio (spectrogram and waveform encoders alike): the mean MFCC (13 coefficients, 25 ms windows every 10 ms)
  over the window's real audio, the hand-made features the speech probes compare with.
The probes standardise raw features with the training set's statistics (`standardise`), so one loud pixel or
coefficient does not decide the cosine of k-NN.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.eval.features import Extractor
from mmssl.eval.inputs import EvalInputs
from mmssl.eval.speech import mfcc_frames
from mmssl.models.cpc_audio import DOWNSAMPLING

__all__ = ["raw_extractor", "standardise", "IMAGE_SIDE", "CLIP_GRID"]

IMAGE_SIDE = 16
CLIP_GRID = (4, 8, 8)


def raw_extractor(inputs: EvalInputs) -> tuple[str, str, Extractor]:
    """The raw-input baseline of `inputs`' modality: (row name, what it is, extractor)."""
    if inputs.kind == "image":
        def pixels(batch: Mapping[str, Any], ready: Mapping[str, Any], inputs: EvalInputs) -> Tensor:
            x = ready["image"].image()  # (B, 3, H, W), normalised as the encoder sees it
            return F.adaptive_avg_pool2d(x.float(), IMAGE_SIDE).flatten(1)  # (B, 3, 16, 16) -> (B, 768)
        return "raw pixels", f"{IMAGE_SIDE}x{IMAGE_SIDE} RGB, standardised", pixels
    if inputs.kind == "video":
        def clip(batch: Mapping[str, Any], ready: Mapping[str, Any], inputs: EvalInputs) -> Tensor:
            x = ready["video"].image()  # (B, 3, T, H, W)
            grid = tuple(min(g, s) for g, s in zip(CLIP_GRID, x.shape[2:]))
            return F.adaptive_avg_pool3d(x.float(), grid).flatten(1)  # (B, 3, t, h, w) -> (B, 3*t*h*w)
        return "raw pixels", f"clip pixels {'x'.join(map(str, CLIP_GRID))}, standardised", clip
    mfcc = mfcc_frames()

    def mean_mfcc(batch: Mapping[str, Any], ready: Mapping[str, Any], inputs: EvalInputs) -> Tensor:
        wave = batch["audio"].float()  # (B, N), before the fbank
        frames = mfcc(wave)  # (B, N / 160, 13)
        count = (batch["audio_len"].reshape(-1) // DOWNSAMPLING).clamp(1, frames.shape[1])  # frames of real audio
        valid = (torch.arange(frames.shape[1])[None] < count[:, None]).unsqueeze(-1).float()  # (B, T, 1)
        return (frames * valid).sum(1) / valid.sum(1)
    return "mean MFCC", "13 MFCCs averaged over the window, standardised", mean_mfcc


def standardise(train: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """Every tensor standardised per column with the training rows' mean and std (constant columns kept at 0)."""
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return tuple((x - mean) / std for x in (train, *others))
