"""Split-brain autoencoder: Zhang, Isola and Efros, "Split-Brain Autoencoders: Unsupervised Learning by
Cross-Channel Prediction", CVPR 2017 (REFERENCE.md §1.10 for the ab bins).

The Lab channels are split in two and each half is predicted from the other by its own sub-network: F1 predicts ab
from L (a classification over the 313 in-gamut ab bins), F2 predicts L from ab (a classification over 100 L bins
of width 1), both with cross-entropy at 1/4 resolution. The representation is the two sub-networks' features
concatenated (`SplitBrainEncoder`, kept as `encoder`, so evaluation sees 2 x dim features of an RGB image).

Inputs: F1 reads L as the grey RGB image of that lightness (as `Colorization` does); F2 reads a 3-channel image
(0, a / 100, b / 100) built from the ab channels alone, so no lightness reaches it. Both sub-networks have the
architecture of the encoder passed in; F2 is a copy with its weights re-drawn unless one is given.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.colorbins import NUM_BINS, ab_bins, nearest_bin
from mmssl.methods.colorization import encoder_stride, grey_tokens, lab_of
from mmssl.methods.output import Output
from mmssl.models.dense import DenseHead
from mmssl.models.encoder import Encoded
from mmssl.tokens import Tokens

__all__ = ["SplitBrain", "SplitBrainEncoder", "ab_input"]

L_BINS = 100
AB_SCALE = 100.0  # ab span roughly [-110, 110]: divide to unit scale


def ab_input(lab: Tensor) -> Tensor:
    """The 3-channel input (B, 3, H, W) of the ab sub-network: (0, a / 100, b / 100)."""
    return torch.cat([torch.zeros_like(lab[:, :1]), lab[:, 1:] / AB_SCALE], dim=1)


def _reset(module: nn.Module) -> None:
    """Re-draws the weights of every submodule that knows how (so the copy does not start as a twin)."""
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()


class SplitBrainEncoder(nn.Module):
    """The two sub-networks as one encoder of RGB images: features concatenated along the channels.

    Args:
        l_net: the L -> ab sub-network (reads grey images).
        ab_net: the ab -> L sub-network (reads `ab_input` images).
    """

    def __init__(self, l_net: nn.Module, ab_net: nn.Module) -> None:
        super().__init__()
        self.l_net, self.ab_net = l_net, ab_net
        self.modality = l_net.modality
        self.dim = l_net.dim + ab_net.dim

    def halves(self, lab: Tensor) -> tuple[Encoded, Encoded]:
        """The two sub-networks' outputs for a Lab image (B, 3, H, W)."""
        return (self.l_net(grey_tokens(lab[:, :1], self.modality)),
                self.ab_net(self.modality.tokenize(ab_input(lab))))

    def forward(self, tokens: Tokens) -> Encoded:
        """Concatenated features (B, N, D1 + D2) of normalised RGB tokens (every token visible)."""
        first, second = self.halves(lab_of(tokens, self.modality))
        feats = torch.cat([first.tokens, second.tokens], dim=-1)
        return Encoded(tokens=feats, prefix=feats[:, :0], pooled=feats.mean(1), visible=None, grid=first.grid)

    def forward_dense(self, tokens: Tokens) -> Tensor:
        """Features laid out on the grid: (B, D1 + D2, h, w)."""
        out = self(tokens)
        b, _, d = out.tokens.shape
        return out.tokens.transpose(1, 2).reshape(b, d, *out.grid)  # (B, N, D) -> (B, D, h, w)


class SplitBrain(nn.Module):
    """Cross-channel prediction by two sub-networks, classification losses over ab and L bins.

    Args:
        encoder: the L -> ab sub-network (`TokenEncoder` or `CNNEncoder` over RGB images).
        ab_encoder: the ab -> L sub-network; default a re-initialised copy of `encoder`.
        out_stride: input pixels per predicted position (4, as in colorization).
    """

    modalities = ("image",)

    def __init__(self, encoder: nn.Module, *, ab_encoder: nn.Module | None = None, out_stride: int = 4) -> None:
        super().__init__()
        if ab_encoder is None:
            ab_encoder = copy.deepcopy(encoder)
            _reset(ab_encoder)
        self.encoder = SplitBrainEncoder(encoder, ab_encoder)
        self.modality = encoder.modality
        self.out_stride = out_stride
        self.register_buffer("bins", ab_bins(), persistent=False)
        sub = lambda net: max(1, min(2, encoder_stride(net) // out_stride))  # noqa: E731
        self.ab_head = DenseHead(encoder.dim, NUM_BINS, subpixel=sub(encoder))
        self.l_head = DenseHead(ab_encoder.dim, L_BINS, subpixel=sub(ab_encoder))

    def targets(self, lab: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest ab bin and L bin (B, H/s, W/s) of each cell at 1/out_stride."""
        cells = F.avg_pool2d(lab, self.out_stride)  # (B, 3, H/s, W/s)
        l_bin = cells[:, 0].floor().long().clamp(0, L_BINS - 1)
        return nearest_bin(cells[:, 1:], bins=self.bins), l_bin

    def forward(self, batch: dict) -> Output:
        lab = lab_of(batch[self.modality.name], self.modality)
        ab_target, l_target = self.targets(lab)
        size = tuple(ab_target.shape[-2:])
        first, second = self.encoder.halves(lab)
        ab_logits, l_logits = self.ab_head(first, size), self.l_head(second, size)
        loss_ab = F.cross_entropy(ab_logits.float(), ab_target)
        loss_l = F.cross_entropy(l_logits.float(), l_target)
        loss = loss_ab + loss_l
        return Output(loss=loss, logs={
            "loss": loss.detach(), "loss_ab": loss_ab.detach(), "loss_l": loss_l.detach(),
            "ab_acc": (ab_logits.argmax(1) == ab_target).float().mean().detach(),
            "l_acc": (l_logits.argmax(1) == l_target).float().mean().detach()})
