"""The pretext learning tests' loop: train on synthetic objects, then held-out pretext accuracy and probes.

Shared by the rotation, jigsaw, relative-position, colorization, split-brain and context-encoder tests. The probes
read frozen mean-pooled features of whole held-out images, from the trained encoder and from the same encoder at
random init, fed the same input (what the method's encoder reads: RGB, or L alone for colorization): a weighted
k-NN (k = 20, T = .07) and a linear probe (BatchNorm without affine + one linear layer, MAE's protocol, SGD).
"""

from __future__ import annotations

from typing import Callable

import torch
from learning import chunks, pooled, snapshot, tiny_encoder, tiny_spec, train
from pretext_data import NUM_CLASSES, upright_objects
from torch import Tensor, nn
from twoviews import one_thread

from mmssl.eval.knn import knn_scores, topk_accuracy
from mmssl.eval.linear import evaluate_probe, train_linear_probe
from mmssl.modalities import Modality

__all__ = ["SPEC", "SMALL", "vit", "rgb_features", "probes", "learn"]

SPEC = tiny_spec("image", patch=(8, 8), size=(48, 48))
SMALL = tiny_spec("image", patch=(8, 8), size=(32, 32))  # the colour-prediction tests: 16 tokens, 8x8 outputs

Features = Callable[[nn.Module, Tensor], Tensor]  # (encoder, images (B, 3, H, W) in [0, 1]) -> (B, D)


def vit(spec: Modality = SPEC, **kwargs):
    """A 2-block, 64-wide ViT on 8x8 patches, mean-pooled (no [CLS]) so the trained feature is the probed one."""
    return tiny_encoder(spec, depth=kwargs.pop("depth", 2), dim=kwargs.pop("dim", 64), cls_token=False, **kwargs)


def rgb_features(encoder: nn.Module, images: Tensor) -> Tensor:
    """Mean-pooled features (B, D) of normalised RGB images, as the encoder's modality tokenises them."""
    spec = encoder.modality
    return pooled(encoder, spec.tokenize(spec.normalize(images)))


@torch.no_grad()
def probes(encoder: nn.Module, features: Features, x: Tensor, y: Tensor, n_train: int) -> dict[str, float]:
    """k-NN and linear-probe top-1 (%) on images x[n_train:] of frozen features trained on x[:n_train]."""
    encoder.eval()
    feats = torch.cat([features(encoder, x[part]) for part in chunks(x.shape[0], 256)])  # (N, D)
    f_train, f_test, y_train, y_test = feats[:n_train], feats[n_train:], y[:n_train], y[n_train:]
    knn = topk_accuracy(knn_scores(f_train, y_train, f_test, k=20, num_classes=NUM_CLASSES), y_test, ks=(1,))
    with torch.enable_grad():
        probe = train_linear_probe(f_train, y_train, num_classes=NUM_CLASSES, epochs=60, batch_size=128, lr=0.5)
    return {"knn": knn["top1"], "linear": evaluate_probe(probe, f_test, y_test, ks=(1,))["top1"]}


def learn(method: nn.Module, accuracy: Callable[[nn.Module, dict], float] | None, *, steps: int, lr: float,
          batch_size: int = 32, n_train: int = 1024, n_test: int = 256, spec: Modality = SPEC,
          data: Callable[..., tuple[Tensor, Tensor]] = upright_objects,
          features: Features = rgb_features) -> dict[str, float]:
    """Trains `method` on synthetic objects; `accuracy(method, batch)` gives its pretext accuracy on a batch (None:
    the test measures the pretext task itself).

    Returns the first and last losses, seconds, held-out pretext accuracy (%), and k-NN / linear-probe top-1 (%)
    of the encoder trained (`trained`, `linear`) and at random init (`random`, `linear_random`).
    """
    with one_thread():
        torch.manual_seed(0)
        x, y = data(n_train + n_test, size=spec.size[0], generator=torch.Generator().manual_seed(0))
        tokens = lambda images: spec.tokenize(spec.normalize(images))  # noqa: E731
        random_init = snapshot(method.encoder)
        first, last, secs = train(method, lambda index: {"image": tokens(x[index])}, n_train, steps=steps,
                                  batch_size=batch_size, lr=lr)
        pretext = float("nan")
        if accuracy is not None:
            with torch.no_grad():
                torch.manual_seed(1)
                pretext = 100 * accuracy(method, {"image": tokens(x[n_train:])})
        trained = probes(method.encoder, features, x, y, n_train)
        rand = probes(random_init, features, x, y, n_train)
    return {"first": first, "last": last, "secs": secs, "pretext": pretext, "trained": trained["knn"],
            "random": rand["knn"], "linear": trained["linear"], "linear_random": rand["linear"]}
