"""Linear probing of frozen features (MAE's `main_linprobe.py`): standardised features, then one linear layer.

Features are extracted once and cached (`extract_features`), so the probe trains on a (N, D) tensor and every
step costs a matrix multiply instead of an encoder pass. `mmssl eval linear` solves the probe to convergence with
`mmssl.eval.logistic.fit_probe` (the speech probes' solver too); `train_linear_probe` keeps MAE's SGD recipe
(BatchNorm without affine, cosine schedule) for callers that want it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from mmssl.eval.knn import topk_accuracy
from mmssl.models.encoder import TokenEncoder

__all__ = ["LinearProbe", "extract_features", "train_linear_probe", "evaluate_probe"]


class LinearProbe(nn.Module):
    """BatchNorm1d(affine=False, eps=1e-6) followed by a linear classifier (weights ~ N(0, 0.01), bias 0)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(x))


def _pooled(encoder: nn.Module | Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    if isinstance(encoder, TokenEncoder):
        spec = encoder.modality
        return encoder(spec.tokenize(spec.normalize(x))).pooled  # [CLS] (or mean token) feature, (B, D)
    out = encoder(x)
    if out.dim() > 2:
        out = out.flatten(2).mean(-1)  # (B, D, *grid) -> (B, D): average over positions
    return out


@torch.no_grad()
def extract_features(encoder: nn.Module | Callable[[Tensor], Tensor], batches: Iterable[Any], *,
                     input_key: str = "input", label_key: str = "label",
                     device: str | torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Frozen features (N, D) and labels (N,) of every sample in `batches`, on the CPU.

    Args:
        encoder: a `TokenEncoder` (its pooled feature, inputs normalised and tokenised by its modality) or any
            callable mapping inputs to (B, D) or dense (B, D, ...) features (averaged over positions).
        batches: an iterable of (inputs, labels) pairs or of mappings with `input_key` and `label_key`.
        input_key: key of the inputs in mapping batches.
        label_key: key of the labels in mapping batches.
        device: where the encoder runs (default: where its parameters are, else the CPU).
    """
    if isinstance(encoder, nn.Module):
        encoder.eval()
        if device is None:
            param = next(encoder.parameters(), None)
            device = param.device if param is not None else "cpu"
    feats, labels = [], []
    for i, batch in enumerate(tqdm(batches, desc="features", unit="batch", leave=False)):
        if isinstance(batch, Mapping):
            if input_key not in batch or label_key not in batch:
                raise KeyError(f"batch {i} has keys {sorted(batch)}; expected {input_key!r} and {label_key!r}")
            x, y = batch[input_key], batch[label_key]
        else:
            x, y = batch
        feats.append(_pooled(encoder, x.to(device)).float().cpu())
        labels.append(torch.as_tensor(y).reshape(-1).long().cpu())  # (B,)
    if not feats:
        raise ValueError("extract_features got no batches")
    return torch.cat(feats), torch.cat(labels)


def train_linear_probe(feats: Tensor, labels: Tensor, *, num_classes: int | None = None, epochs: int = 90,
                       batch_size: int = 256, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                       seed: int = 0) -> LinearProbe:
    """Trains a `LinearProbe` on cached features (N, D) with labels (N,); returns it in eval mode.

    SGD with momentum, the learning rate scaled by batch_size / 256 (MAE's rule) and decayed by a cosine over
    all steps; mini-batches are drawn with a seeded generator so a run repeats exactly.
    """
    if feats.shape[0] != labels.shape[0]:
        raise ValueError(f"{feats.shape[0]} features but {labels.shape[0]} labels")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    probe = LinearProbe(feats.shape[1], num_classes).to(feats.device)
    opt = torch.optim.SGD(probe.parameters(), lr=lr * batch_size / 256, momentum=momentum,
                          weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = feats.shape[0]
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = epochs * steps_per_epoch
    base = [g["lr"] for g in opt.param_groups]
    probe.train()
    step = 0
    for _ in tqdm(range(epochs), desc="linear probe", unit="epoch", leave=False):
        order = torch.randperm(n, generator=gen).to(feats.device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if idx.numel() < 2:  # BatchNorm needs two samples to estimate a variance
                continue
            for group, lr0 in zip(opt.param_groups, base):
                group["lr"] = lr0 * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(probe(feats[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return probe.eval()


@torch.no_grad()
def evaluate_probe(probe: nn.Module, feats: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracies (percent) of a trained probe on held-out features."""
    return topk_accuracy(probe.eval()(feats), labels, ks)
