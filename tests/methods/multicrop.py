"""Multi-crop views of synthetic images and a short training loop for the self-distillation learning tests.

DINO's augmentations in miniature: random resized crops (global scale 0.4-1, local 0.05-0.4, aspect 3/4-4/3)
with a horizontal flip, drawn per sample and applied with one `grid_sample`, and a colour jitter (brightness,
contrast, saturation) with probability .8 plus grayscale with probability .2. The data layer's `Augment` does the
same per sample from the counter-based RNG, but too slowly for a 60 s CPU test.

`train_views` is the recipe's loop in small: warmup + cosine learning rate, gradient clipping at 3.0 (DINO), and
`method.update(progress)` after every step when the method has one (EMA teacher, temperature and freeze
schedules).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.eval.knn import knn_scores, topk_accuracy
from mmssl.modalities import Modality
from mmssl.tokens import Tokens

__all__ = ["crops", "jitter", "multicrop_views", "train_views", "pooled_knn_top1"]


def crops(x: Tensor, size: int, scale: tuple[float, float], generator: torch.Generator) -> Tensor:
    """Random resized crops (B, C, size, size) of images x (B, C, H, W), flipped half of the time."""
    b = x.shape[0]
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(b, generator=generator)
    ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * torch.rand(b, generator=generator))
    w = (area * ratio).sqrt().clamp(max=1.0)  # crop width as a fraction of the image
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (2 * torch.rand(b, generator=generator) - 1) * (1 - w)  # centre in [-1 + w, 1 - w]
    cy = (2 * torch.rand(b, generator=generator) - 1) * (1 - h)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)  # (B, size, size, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def jitter(x: Tensor, generator: torch.Generator, *, p: float = 0.8, gray: float = 0.2) -> Tensor:
    """Colour jitter of images (B, 3, H, W) in [0, 1]: brightness .4, contrast .4, saturation .2; grayscale."""
    b = x.shape[0]

    def factor(a: float) -> Tensor:
        on = torch.rand(b, 1, 1, 1, generator=generator) < p
        f = 1 + a * (2 * torch.rand(b, 1, 1, 1, generator=generator) - 1)
        return torch.where(on, f, torch.ones_like(f))

    luma = (x * torch.tensor([0.299, 0.587, 0.114]).reshape(1, 3, 1, 1)).sum(1, keepdim=True)  # (B, 1, H, W)
    x = x * factor(0.4)
    x = (x - luma.mean((2, 3), keepdim=True)) * factor(0.4) + luma.mean((2, 3), keepdim=True)
    x = luma + (x - luma) * factor(0.2)
    to_gray = torch.rand(b, 1, 1, 1, generator=generator) < gray
    return torch.where(to_gray, luma.expand_as(x), x).clamp(0, 1)


def multicrop_views(x: Tensor, spec: Modality, generator: torch.Generator, *, global_size: int = 32,
                    local_size: int = 16, local_views: int = 4) -> list[Tokens]:
    """2 global + `local_views` local views of images x (B, 3, H, W) in [0, 1], as normalised `Tokens`."""
    sizes = [(global_size, (0.4, 1.0))] * 2 + [(local_size, (0.05, 0.4))] * local_views
    return [spec.tokenize(spec.normalize(jitter(crops(x, s, sc, generator), generator))) for s, sc in sizes]


def train_views(method: nn.Module, make_batch: Callable[[Tensor, torch.Generator], dict], num_samples: int, *,
                steps: int, batch_size: int = 64, lr: float = 2e-3, weight_decay: float = 0.04,
                seed: int = 0) -> tuple[list[dict], float]:
    """AdamW on the trainable parameters with warmup + cosine, clip 3.0, `update(progress)` after each step.

    `make_batch(index, generator)` returns the batch for sample indices. Returns every step's logs (floats) and
    the seconds taken.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 10)
    history, start = [], time.perf_counter()
    method.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        out = method(make_batch(torch.randint(0, num_samples, (batch_size,), generator=gen), gen))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(method.parameters(), 3.0)
        opt.step()
        if hasattr(method, "update"):
            method.update((step + 1) / steps)
        history.append({k: float(v) for k, v in out.logs.items()})
    method.eval()
    return history, time.perf_counter() - start


@torch.no_grad()
def pooled_knn_top1(encoder: nn.Module, train: Tokens, train_labels: Tensor, test: Tokens, test_labels: Tensor, *,
                    k: int = 20) -> float:
    """Top-1 (%) of DINO's weighted k-NN on the encoder's pooled ([CLS]) features, what DINO trains and evaluates."""
    encoder.eval()

    def features(tokens: Tokens) -> Tensor:
        parts = [encoder(Tokens(patches=tokens.patches[i:i + 256], grid=tokens.grid, patch=tokens.patch,
                                modality=tokens.modality)).pooled for i in range(0, tokens.batch_size, 256)]
        return torch.cat(parts)

    scores = knn_scores(features(train), train_labels, features(test), k=k)
    return topk_accuracy(scores, test_labels, ks=(1,))["top1"]
