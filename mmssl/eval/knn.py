"""Weighted k-nearest-neighbour classification of frozen features (Wu et al. 2018; DINO's `eval_knn.py`).

Each test feature votes with its k most cosine-similar training features, each vote weighted by
exp(similarity / T). DINO's protocol: k = 20, T = 0.07.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["knn_scores", "topk_accuracy"]


@torch.no_grad()
def knn_scores(train: Tensor, train_labels: Tensor, test: Tensor, *, k: int = 20, temperature: float = 0.07,
               num_classes: int | None = None, chunk: int = 1024) -> Tensor:
    """Class scores (M, C) for test features (M, D) from training features (N, D) with labels (N,).

    Features are L2-normalised here; test rows are processed in chunks so memory stays O(chunk * N).
    """
    if train.shape[0] != train_labels.shape[0]:
        raise ValueError(f"{train.shape[0]} training features but {train_labels.shape[0]} labels")
    num_classes = int(train_labels.max()) + 1 if num_classes is None else num_classes
    k = min(k, train.shape[0])
    train = F.normalize(train.float(), dim=1)
    out = []
    for start in range(0, test.shape[0], chunk):
        query = F.normalize(test[start:start + chunk].float(), dim=1)
        sim, idx = (query @ train.T).topk(k, dim=1)  # (m, k)
        weights = (sim / temperature).exp()
        votes = torch.zeros(query.shape[0], num_classes, device=query.device)
        out.append(votes.scatter_add_(1, train_labels[idx], weights))  # (m, C)
    return torch.cat(out) if out else torch.zeros(0, num_classes)


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracies in percent, e.g. {"top1": 81.2, "top5": 95.0}; k is capped at the class count."""
    result = {}
    for k in ks:
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        result[f"top{k}"] = 100.0 * (top == labels.reshape(-1, 1)).any(1).float().mean().item()
    return result
