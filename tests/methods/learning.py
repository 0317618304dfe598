"""Helpers for the learning tests: a short seeded training loop, k-NN probes of frozen features, tiny specs."""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from typing import Callable

import torch
from torch import Tensor, nn

from mmssl.eval.knn import knn_scores, topk_accuracy
from mmssl.modalities import Modality, get_modality
from mmssl.models import TokenEncoder
from mmssl.tokens import Tokens

__all__ = ["tiny_spec", "tiny_encoder", "train", "knn_top1", "chunks"]


def tiny_spec(name: str, *, patch: tuple[int, ...], size: tuple[int, ...]) -> Modality:
    """A modality spec with small patches and inputs, for CPU tests."""
    return replace(get_modality(name), patch=patch, size=size)


def tiny_encoder(spec: Modality, *, depth: int = 3, dim: int = 96, heads: int = 4, **kwargs) -> TokenEncoder:
    """A small ViT over `spec`'s tokens."""
    return TokenEncoder("vit_tiny_patch16_224", modality=spec, depth=depth, dim=dim, heads=heads, **kwargs)


def chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def train(method: nn.Module, make_batch: Callable[[Tensor], dict], num_samples: int, *, steps: int,
          batch_size: int = 64, lr: float = 1e-3, seed: int = 0) -> tuple[float, float, float]:
    """AdamW (0.9, 0.95) with a short warmup and cosine decay over `steps` random mini-batches.

    `make_batch(index)` returns the batch dict for sample indices. Returns (first loss, last loss averaged over
    the final 10 steps, seconds).
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(method.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item()))
    method.train()
    start, losses = time.perf_counter(), []
    for _ in range(steps):
        index = torch.randint(0, num_samples, (batch_size,), generator=gen)
        loss = method(make_batch(index)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    method.eval()
    return losses[0], sum(losses[-10:]) / len(losses[-10:]), time.perf_counter() - start


@torch.no_grad()
def pooled(encoder: TokenEncoder, tokens: Tokens) -> Tensor:
    """Mean-pooled patch features (B, D) of fully visible tokens, in chunks.

    Global average pooling, not [CLS]: an MAE-style [CLS] gets almost no training signal (the loss is on patches),
    so its k-NN accuracy says little; MAE itself fine-tunes with global pooling.
    """
    encoder.eval()
    out = []
    for part in chunks(tokens.batch_size, 256):
        sub = Tokens(patches=tokens.patches[part], grid=tokens.grid, patch=tokens.patch, modality=tokens.modality)
        out.append(encoder(sub).tokens.mean(1))
    return torch.cat(out)


def knn_top1(encoder: TokenEncoder, train_tokens: Tokens, train_labels: Tensor, test_tokens: Tokens,
             test_labels: Tensor, *, k: int = 20) -> float:
    """Top-1 accuracy (%) of a weighted k-NN on frozen pooled features."""
    scores = knn_scores(pooled(encoder, train_tokens), train_labels, pooled(encoder, test_tokens), k=k)
    return topk_accuracy(scores, test_labels, ks=(1,))["top1"]


def snapshot(module: nn.Module) -> nn.Module:
    """A frozen copy (the encoder at random init, before training)."""
    return copy.deepcopy(module).eval()
