"""CPC's waveform encoder and autoregressive context network (van den Oord et al., 2018; Rivière et al., 2020).

Follows `facebookresearch/CPC_audio` (`cpc/model.py`), REFERENCE.md §1.18:
- `CPCEncoder`: five Conv1d layers, kernels [10, 8, 4, 4, 4], strides [5, 4, 2, 2, 2], paddings [3, 2, 1, 1, 1],
  each followed by a norm and a ReLU. The strides multiply to 160 and the paddings keep the length exact, so a
  window of N samples gives N / 160 latents z_t (one per 10 ms at 16 kHz). The default norm is `ChannelNorm`:
  each time step standardised over its channels (unbiased variance, eps 1e-5) with a learned per-channel affine.
- the context network g_ar: a one-layer GRU (the paper, 256 units) or LSTM (the repository's default), run
  left to right over z so c_t only sees z_{<=t}.
- `CPCAudioEncoder` holds both: it is the method's `encoder`, so evaluation reads z and c from one module.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from mmssl.modalities import Modality, get_modality

__all__ = ["ChannelNorm", "CPCEncoder", "CPCAudioEncoder", "CPCFeatures", "DOWNSAMPLING", "waveform_modality",
           "output_length"]

KERNELS = (10, 8, 4, 4, 4)
STRIDES = (5, 4, 2, 2, 2)
PADDINGS = (3, 2, 1, 1, 1)
DOWNSAMPLING = 160  # product of STRIDES: samples per latent


def waveform_modality(samples: int = 20480) -> Modality:
    """The "audio" modality seen as raw 16 kHz samples: one 160-sample "patch" per latent, no normalisation.

    It keeps the name "audio" (CPC reads audio shards) while saying what the encoder consumes.
    """
    if samples % DOWNSAMPLING:
        raise ValueError(f"a CPC window must be a multiple of {DOWNSAMPLING} samples, got {samples}")
    return get_modality({"name": "audio", "patch": [DOWNSAMPLING], "size": [samples], "channels": 1,
                         "mean": [0.0], "std": [1.0], "key": "flac"})


class ChannelNorm(nn.Module):
    """Per time step, standardise the C channels of (B, C, T) features, then a learned per-channel affine.

    Args:
        channels: C.
        eps: added to the variance (1e-5, as CPC_audio).
    """

    def __init__(self, channels: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, channels, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        # unbiased, as CPC_audio's ChannelNorm; written out because Tensor.var over dim 1 is ~10x slower on CPU
        var = centred.pow(2).sum(dim=1, keepdim=True) / (x.shape[1] - 1)
        return centred * torch.rsqrt(var + self.eps) * self.weight + self.bias


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "channel":
        return ChannelNorm(channels)
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'channel', 'batch' or 'none', got {kind!r}")


class CPCEncoder(nn.Module):
    """The strided convolutional encoder g_enc: waveform (B, N) -> latents z (B, N / 160, dim).

    Args:
        dim: channels of every layer (512 in the paper, 256 in CPC_audio's default).
        norm: "channel" (CPC_audio's default layerNorm), "batch" or "none".
    """

    def __init__(self, dim: int = 512, *, norm: str = "channel") -> None:
        super().__init__()
        self.dim = dim
        layers: list[nn.Module] = []
        for i, (k, s, p) in enumerate(zip(KERNELS, STRIDES, PADDINGS)):
            layers += [nn.Conv1d(1 if i == 0 else dim, dim, k, stride=s, padding=p), _norm(norm, dim), nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, wave: Tensor) -> Tensor:
        if wave.dim() != 2:
            raise ValueError(f"CPCEncoder expects waveforms (B, N), got {tuple(wave.shape)}")
        x = self.net(wave.float().unsqueeze(1))  # (B, N) -> (B, 1, N) -> (B, dim, N / 160)
        return x.transpose(1, 2)  # (B, dim, T) -> (B, T, dim)


class CPCFeatures(NamedTuple):
    """Latents z (B, T, D) from the conv encoder and contexts c (B, T, H) from the autoregressive network."""

    z: Tensor
    c: Tensor


class CPCAudioEncoder(nn.Module):
    """g_enc followed by g_ar: waveform windows (B, N) -> `CPCFeatures(z, c)`.

    Args:
        dim: conv encoder channels (z width; 512 paper).
        context_dim: hidden size of the recurrent network (c width; 256 paper).
        context: "gru" (the paper) or "lstm" (CPC_audio's default).
        norm: conv encoder norm ("channel", "batch" or "none").
        samples: the training window in samples (sets `modality`; any multiple of 160 is accepted at run time).
    """

    def __init__(self, *, dim: int = 512, context_dim: int = 256, context: str = "gru", norm: str = "channel",
                 samples: int = 20480) -> None:
        super().__init__()
        if context not in ("gru", "lstm"):
            raise ValueError(f"context must be 'gru' or 'lstm', got {context!r}")
        self.modality = waveform_modality(samples)
        self.dim, self.context_dim, self.context_kind = dim, context_dim, context
        self.conv = CPCEncoder(dim, norm=norm)
        rnn = nn.GRU if context == "gru" else nn.LSTM
        self.context = rnn(dim, context_dim, num_layers=1, batch_first=True)

    @property
    def downsampling(self) -> int:
        return DOWNSAMPLING

    def encode(self, wave: Tensor) -> Tensor:
        """Latents z (B, N / 160, dim)."""
        return self.conv(wave)

    def contextualize(self, z: Tensor) -> Tensor:
        """Causal contexts c (B, T, context_dim) of latents z (B, T, dim)."""
        c, _ = self.context(z)
        return c

    def forward(self, wave: Tensor) -> CPCFeatures:
        z = self.encode(wave)
        return CPCFeatures(z, self.contextualize(z))


def output_length(samples: int, *, kernels: Sequence[int] = KERNELS, strides: Sequence[int] = STRIDES,
                  paddings: Sequence[int] = PADDINGS) -> int:
    """Latents the conv stack gives for `samples` input samples (Conv1d's length formula, layer by layer)."""
    n = samples
    for k, s, p in zip(kernels, strides, paddings):
        n = (n + 2 * p - k) // s + 1
    return n
