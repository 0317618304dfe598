"""Colorization: Zhang, Isola and Efros, "Colorful Image Colorization", ECCV 2016 (REFERENCE.md §1.10).

The network sees only the lightness L of an image and predicts, at 1/4 of the input resolution, a distribution
over the 313 in-gamut ab bins (grid 10). Targets are the ground-truth ab (averaged over each 4 x 4 cell) soft-encoded
on their 5 nearest bins with a Gaussian (sigma 5); the multinomial cross-entropy of each position is weighted by
the class-rebalancing weight of its nearest bin (lambda = .5), from the smoothed empirical bin distribution. The
colour image shown is L with the annealed mean (T = .38) of the predicted distribution, upsampled.

The paper's distribution is measured once on ImageNet; a stream has no such pass, so `counts` accumulates the bins
of the training batches (a buffer, saved with the checkpoint) and the weights follow it; a prior can also be
given. L enters the encoder as the grey RGB image of that lightness (Lab (L, 0, 0) in sRGB), normalised as the
image modality is: that carries exactly L, and keeps the encoder an ordinary RGB image encoder for evaluation.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.color import lab_to_rgb, rgb_to_lab
from mmssl.colorbins import NUM_BINS, ab_bins, annealed_mean, nearest_bin, rebalance_weights, smooth_prior, soft_encode
from mmssl.methods.output import Output
from mmssl.models.dense import DenseHead
from mmssl.modalities import Modality
from mmssl.tokens import Tokens

__all__ = ["Colorization", "lab_of", "grey_tokens", "encoder_stride", "save_panels"]


def lab_of(tokens: Tokens, modality: Modality) -> Tensor:
    """The Lab image (B, 3, H, W) of normalised RGB tokens."""
    return rgb_to_lab(modality.denormalize(tokens.image().float()).clamp(0, 1))


def grey_tokens(lightness: Tensor, modality: Modality) -> Tokens:
    """Tokens of the grey sRGB image with lightness L (B, 1, H, W), normalised as `modality`."""
    lab = torch.cat([lightness, torch.zeros_like(lightness), torch.zeros_like(lightness)], dim=1)  # (B, 3, H, W)
    return modality.tokenize(modality.normalize(lab_to_rgb(lab)))


def encoder_stride(encoder: nn.Module) -> int:
    """Input pixels per output token along one axis (the patch size of a ViT, the total stride of a CNN)."""
    if hasattr(encoder, "trunk"):  # a timm CNN: its last feature level's reduction (output_stride included)
        return int(encoder.trunk.feature_info[-1]["reduction"])
    return int(encoder.modality.patch[0])


def save_panels(columns: list[Tensor], path: str | Path, *, samples: int, min_side: int = 96) -> Path:
    """Writes a PNG grid: one row per sample, one column per (B, 3, H, W) image in [0, 1]."""
    from PIL import Image

    rows = [torch.cat([c[i] for c in columns], dim=2) for i in range(min(samples, columns[0].shape[0]))]
    grid = torch.cat(rows, dim=1)  # (3, rows*H, cols*W)
    scale = max(1, min_side // columns[0].shape[-1])
    img = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST).save(path)
    return path


class Colorization(nn.Module):
    """Predicts the ab bin distribution from L at 1/4 resolution (Zhang et al. 2016).

    Args:
        encoder: a `TokenEncoder` or `CNNEncoder` over RGB images.
        lam: class-rebalancing mix lambda (0: full rebalancing, 1: none).
        sigma: Gaussian width of the soft encoding and of the prior smoothing.
        neighbours: bins each target spreads over.
        temperature: annealed-mean temperature T for the output image.
        rebalance: weight the loss by class rebalancing (False: plain soft cross-entropy).
        prior: a fixed (313,) bin distribution (e.g. measured on ImageNet); None accumulates it from training.
        out_stride: input pixels per output position (4 in the paper).
    """

    modalities = ("image",)

    def __init__(self, encoder: nn.Module, *, lam: float = 0.5, sigma: float = 5.0, neighbours: int = 5,
                 temperature: float = 0.38, rebalance: bool = True, prior: list[float] | None = None,
                 out_stride: int = 4) -> None:
        super().__init__()
        self.encoder = encoder
        self.modality = encoder.modality
        self.lam, self.sigma, self.neighbours, self.temperature = lam, sigma, neighbours, temperature
        self.rebalance, self.out_stride = rebalance, out_stride
        self.fixed_prior = prior is not None
        self.register_buffer("counts", torch.tensor(prior, dtype=torch.float32) if prior is not None
                             else torch.zeros(NUM_BINS))
        self.register_buffer("bins", ab_bins(), persistent=False)
        stride = encoder_stride(encoder)
        self.head = DenseHead(encoder.dim, NUM_BINS, subpixel=max(1, min(2, stride // out_stride)))

    def weights(self) -> Tensor:
        """Current per-bin rebalancing weights (313,); all ones before any counts."""
        if not self.rebalance or self.counts.sum() == 0:
            return torch.ones(NUM_BINS, device=self.counts.device)
        prior = smooth_prior(self.counts, sigma=self.sigma, bins=self.bins)
        return rebalance_weights(prior, lam=self.lam)

    def logits(self, lightness: Tensor) -> Tensor:
        """Bin logits (B, 313, H/s, W/s) from L (B, 1, H, W)."""
        h, w = lightness.shape[-2:]
        encoded = self.encoder(grey_tokens(lightness, self.modality))
        return self.head(encoded, (h // self.out_stride, w // self.out_stride))

    def targets(self, lab: Tensor) -> tuple[Tensor, Tensor]:
        """Soft targets (B, 313, h, w) and nearest-bin indices (B, h, w) of the ab cells at 1/out_stride."""
        ab = F.avg_pool2d(lab[:, 1:], self.out_stride)  # (B, 2, H/s, W/s)
        return soft_encode(ab, neighbours=self.neighbours, sigma=self.sigma, bins=self.bins), nearest_bin(ab, bins=self.bins)

    def forward(self, batch: dict) -> Output:
        lab = lab_of(batch[self.modality.name], self.modality)
        target, nearest = self.targets(lab)
        if self.training and not self.fixed_prior:
            self.counts += torch.bincount(nearest.flatten(), minlength=NUM_BINS).to(self.counts.dtype)
        logits = self.logits(lab[:, :1])
        per_pos = -(target * F.log_softmax(logits.float(), dim=1)).sum(1)  # (B, h, w)
        weight = self.weights()[nearest]  # the weight of each position's nearest bin, as in the paper
        loss = (weight * per_pos).mean()
        acc = (logits.argmax(1) == nearest).float().mean()
        return Output(loss=loss, logs={"loss": loss.detach(), "bin_acc": acc.detach()})

    @torch.no_grad()
    def colorize(self, tokens: Tokens) -> Tensor:
        """RGB (B, 3, H, W) in [0, 1]: the input's L with the annealed-mean ab, upsampled from 1/4 resolution."""
        lab = lab_of(tokens, self.modality)
        probs = torch.softmax(self.logits(lab[:, :1]).float(), dim=1)
        ab = annealed_mean(probs, temperature=self.temperature, bins=self.bins)  # (B, 2, H/4, W/4)
        ab = F.interpolate(ab, size=lab.shape[-2:], mode="bilinear", align_corners=False)
        return lab_to_rgb(torch.cat([lab[:, :1], ab], dim=1))

    @torch.no_grad()
    def figure(self, batch: dict, path: str | Path, *, samples: int = 4) -> Path:
        """Writes a PNG: grey input, colorization (annealed mean), ground truth."""
        tokens = batch[self.modality.name]
        lab = lab_of(tokens, self.modality)
        grey = lab_to_rgb(torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], dim=1))
        truth = self.modality.denormalize(tokens.image().float()).clamp(0, 1)
        return save_panels([grey, self.colorize(tokens), truth], path, samples=samples)
