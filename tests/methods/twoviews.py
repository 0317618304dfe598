"""Two-view learning tests for the joint-embedding methods: textures, augmented views, k-NN before and after.

The views come from the pipeline's own `Augment` (random resized crop, flip, colour jitter, grayscale) with
per-sample parameters drawn from (seed, step, index), so runs are deterministic. The class (the texture's
pattern) survives the augmentations; colours, period and phase do not, which is what the methods must learn.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Iterator

import torch
from learning import knn_top1, snapshot, tiny_encoder, tiny_spec
import synthetic

from mmssl.tokens import Tokens
from pipelines.augment import Augment, Crop

__all__ = ["SPEC", "AUGS", "encoder", "two_view_batch", "train", "learn", "one_thread"]

SPEC = tiny_spec("image", patch=(8, 8), size=(32, 32))
AUGS = (Augment(crop=Crop(size=32, scale=(0.4, 1.0), view="a"), jitter=0.8, grayscale=0.2),
        Augment(crop=Crop(size=32, scale=(0.4, 1.0), view="b"), jitter=0.8, grayscale=0.2))


def encoder(**kwargs):
    """The learning tests' ViT: 2 blocks of 64, 8x8 patches on 32x32 images, mean-pooled (no [CLS]), so the
    feature the method trains is the feature the k-NN probe reads."""
    return tiny_encoder(SPEC, depth=kwargs.pop("depth", 2), dim=kwargs.pop("dim", 64), cls_token=False, **kwargs)


def _tokens(x: torch.Tensor) -> Tokens:
    return SPEC.tokenize(SPEC.normalize(x))


def two_view_batch(images: torch.Tensor, step: list[int]):
    """`make_batch(index)` for `learning.train`: two augmented views of images[index]."""

    def make(index: torch.Tensor) -> dict:
        step[0] += 1
        ids = [(0, step[0], str(int(i))) for i in index]
        return {"views": [_tokens(aug(images[index], ids)) for aug in AUGS]}

    return make


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine, two threads contending with other jobs run ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def learn(method, *, steps: int, lr: float, batch_size: int = 64, n_train: int = 1536, n_test: int = 256,
          data: str = "textures") -> dict[str, float]:
    """Trains `method` on two views of `synthetic.<data>` images (textures or shapes); returns the first and last
    losses, seconds, and k-NN top-1 (%) of its encoder trained and at random init."""
    with one_thread():
        return _learn(method, steps=steps, lr=lr, batch_size=batch_size, n_train=n_train, n_test=n_test, data=data)


def train(method, make_batch, num_samples: int, *, steps: int, lr: float, batch_size: int,
          seed: int = 0) -> tuple[float, float, float, dict[str, float]]:
    """`learning.train`'s loop (AdamW (0.9, 0.95), warmup + cosine) plus `method.update(progress)` after every
    step, as the recipe calls it (momentum encoders, EMA targets).

    Returns (first loss, mean of the last 10, seconds, the last step's logs).
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.95),
                            weight_decay=0.05)
    warmup = max(1, steps // 10)
    method.train()
    start, losses = time.perf_counter(), []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        index = torch.randint(0, num_samples, (batch_size,), generator=gen)
        out = method(make_batch(index))
        loss = out.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if hasattr(method, "update"):
            method.update((step + 1) / steps)
        losses.append(float(loss.detach()))
    method.eval()
    logs = {k: float(v) for k, v in out.logs.items()}
    return losses[0], sum(losses[-10:]) / len(losses[-10:]), time.perf_counter() - start, logs


def _learn(method, *, steps: int, lr: float, batch_size: int, n_train: int, n_test: int,
           data: str) -> dict[str, float]:
    torch.manual_seed(0)
    x, y = getattr(synthetic, data)(n_train + n_test, generator=torch.Generator().manual_seed(0))
    train_t, test_t = _tokens(x[:n_train]), _tokens(x[n_train:])
    random_init = snapshot(method.encoder)
    first, last, secs, logs = train(method, two_view_batch(x[:n_train], [0]), n_train, steps=steps, lr=lr,
                              batch_size=batch_size)
    trained = knn_top1(method.encoder, train_t, y[:n_train], test_t, y[n_train:])
    rand = knn_top1(random_init, train_t, y[:n_train], test_t, y[n_train:])
    return {"first": first, "last": last, "secs": secs, "trained": trained, "random": rand, **logs}
