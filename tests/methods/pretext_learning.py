"""The pretext learning tests' loop: train on upright objects, then held-out pretext accuracy and k-NN probes.

Shared by the rotation, jigsaw and relative-position tests. The k-NN probe reads the frozen encoder's mean-pooled
features of whole held-out images, trained against the same encoder at random init.
"""

from __future__ import annotations

import torch
from learning import knn_top1, snapshot, tiny_encoder, tiny_spec, train
from pretext_data import upright_objects
from twoviews import one_thread

__all__ = ["SPEC", "vit", "learn"]

SPEC = tiny_spec("image", patch=(8, 8), size=(48, 48))


def vit(**kwargs):
    """A 2-block, 64-wide ViT on 8x8 patches, mean-pooled (no [CLS]) so the trained feature is the probed one."""
    return tiny_encoder(SPEC, depth=kwargs.pop("depth", 2), dim=kwargs.pop("dim", 64), cls_token=False, **kwargs)


def _tokens(x: torch.Tensor):
    return SPEC.tokenize(SPEC.normalize(x))


def learn(method, accuracy, *, steps: int, lr: float, batch_size: int = 32, n_train: int = 1024,
          n_test: int = 256) -> dict[str, float]:
    """Trains `method` on upright objects; `accuracy(method, batch)` gives its pretext accuracy on a batch.

    Returns the first and last losses, seconds, held-out pretext accuracy (%) and k-NN top-1 (%) trained and at
    random init.
    """
    with one_thread():
        torch.manual_seed(0)
        x, y = upright_objects(n_train + n_test, generator=torch.Generator().manual_seed(0))
        train_t, test_t = _tokens(x[:n_train]), _tokens(x[n_train:])
        random_init = snapshot(method.encoder)
        first, last, secs = train(method, lambda index: {"image": _tokens(x[index])}, n_train, steps=steps,
                                  batch_size=batch_size, lr=lr)
        with torch.no_grad():
            torch.manual_seed(1)
            pretext = 100 * accuracy(method, {"image": test_t})
        trained = knn_top1(method.encoder, train_t, y[:n_train], test_t, y[n_train:])
        rand = knn_top1(random_init, train_t, y[:n_train], test_t, y[n_train:])
    return {"first": first, "last": last, "secs": secs, "pretext": pretext, "trained": trained, "random": rand}
