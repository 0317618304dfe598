"""BYOL: normalised MSE written out, the symmetric loss with a stopped target, the EMA schedule, heads, learning."""

import math

import pytest
import torch
from learning import tiny_encoder, tiny_spec
from torch import nn

from mmssl.losses import normalized_mse
from mmssl.methods.byol import BYOL
from mmssl.tokens import Tokens

SPEC = tiny_spec("image", patch=(8, 8), size=(32, 32))


def _method(**kwargs) -> BYOL:
    return BYOL(tiny_encoder(SPEC, depth=1, dim=32), **{"dim": 16, "hidden_dim": 24, **kwargs})


def _views(b: int = 5) -> list:
    return [SPEC.tokenize(torch.randn(b, 3, 32, 32)) for _ in range(2)]


def test_normalized_mse_is_byols_formula() -> None:
    p, z = torch.randn(4, 7) * 3, torch.randn(4, 7)
    # BYOL eq. (2): || q / ||q|| - z / ||z|| ||^2 = 2 - 2 <q, z> / (||q|| ||z||), averaged over the batch
    by_hand = sum(float(((p[i] / p[i].norm() - z[i] / z[i].norm()) ** 2).sum()) for i in range(4)) / 4
    assert math.isclose(float(normalized_mse(p, z)), by_hand, rel_tol=1e-5)
    cos = sum(float(p[i] @ z[i] / (p[i].norm() * z[i].norm())) for i in range(4)) / 4
    assert math.isclose(float(normalized_mse(p, z)), 2 - 2 * cos, rel_tol=1e-5)
    assert float(normalized_mse(z * 5, z)) < 1e-6  # scale-free


def test_forward_is_symmetric_and_the_target_gets_no_gradient() -> None:
    method = _method()
    views = _views()
    out = method({"views": views})
    with torch.no_grad():
        p1, p2 = (method.predictor(method.projector(method.encoder(v).pooled)) for v in views)
        t1, t2 = (method.target_projector(method.target_encoder(v).pooled) for v in views)
        expected = normalized_mse(p1, t2) + normalized_mse(p2, t1)
    assert torch.allclose(out.loss.detach(), expected, atol=1e-5)
    out.loss.backward()
    assert method.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert method.predictor.mlp[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in method.target_encoder.parameters())
    assert all(p.grad is None for p in method.target_projector.parameters())
    assert {"loss", "embedding_std", "momentum"} <= set(out.logs)


def test_target_ema_is_cosine_increased_to_one() -> None:
    method = _method(momentum=0.996)
    for p in method.encoder.parameters():
        p.data.add_(1.0)
    old = [p.clone() for p in method.target_encoder.parameters()]
    method.update(0.25)
    tau = 1 - (1 - 0.996) * (math.cos(math.pi * 0.25) + 1) / 2  # byol_experiment's target_ema schedule
    assert math.isclose(method.momentum, tau, abs_tol=1e-12)
    for new, was, online in zip(method.target_encoder.parameters(), old, method.encoder.parameters()):
        assert torch.allclose(new, tau * was + (1 - tau) * online, atol=1e-6)
    method.update(1.0)
    assert method.momentum == 1.0


def test_projector_and_predictor_are_byols() -> None:
    method = _method()
    for head, width in ((method.projector, 32), (method.predictor, 16)):
        layers = list(head.mlp)
        assert [type(m) for m in layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
        assert layers[0].in_features == width and layers[0].out_features == 24 and layers[3].out_features == 16
    with torch.device("meta"):
        defaults = BYOL(tiny_encoder(SPEC, depth=1, dim=32))
    assert defaults.projector.mlp[0].out_features == 4096 and defaults.projector.out_dim == 256
    assert defaults.predictor.mlp[0].out_features == 4096 and defaults.predictor.out_dim == 256


@pytest.fixture(scope="module")
def trained_on_textures() -> dict[str, float]:
    """BYOL trained for 100 steps on two views of textures (the SimCLR/MoCo tests' setting); k-NN top-1 of its
    encoder and of the same encoder at random init, for the texture class and for a nuisance that both views
    share: the image's dominant colour channel (the jitter rarely changes it)."""
    import synthetic
    from learning import knn_top1, snapshot
    from twoviews import SPEC as VIEWS_SPEC, encoder, one_thread, train, two_view_batch

    n = 1536
    with one_thread():
        torch.manual_seed(0)
        method = BYOL(encoder(), dim=64, hidden_dim=128, momentum=0.99)
        x, y = synthetic.textures(n + 256, generator=torch.Generator().manual_seed(0))
        colour = x.mean((2, 3)).argmax(1)  # (N,) the brightest channel of each image
        tokens = VIEWS_SPEC.tokenize(VIEWS_SPEC.normalize(x))
        train_t, test_t = (Tokens(patches=tokens.patches[s], grid=tokens.grid, patch=tokens.patch, modality="image")
                           for s in (slice(0, n), slice(n, None)))
        random_init = snapshot(method.encoder)
        first, last, secs, logs = train(method, two_view_batch(x[:n], [0]), n, steps=100, lr=2e-3, batch_size=64)
        r = {"first": first, "last": last, "secs": secs, "embedding_std": logs["embedding_std"]}
        for name, labels in (("class", y), ("colour", colour)):
            r[f"{name}_trained"] = knn_top1(method.encoder, train_t, labels[:n], test_t, labels[n:])
            r[f"{name}_random"] = knn_top1(random_init, train_t, labels[:n], test_t, labels[n:])
    print(f"\nBYOL: loss {first:.3f} -> {last:.3f} ({secs:.1f}s); embedding std {r['embedding_std']:.3f} "
          f"(1/sqrt(64) = 0.125, collapse = 0); k-NN top-1 trained vs random init: texture class "
          f"{r['class_trained']:.1f}% vs {r['class_random']:.1f}%, dominant colour {r['colour_trained']:.1f}% vs "
          f"{r['colour_random']:.1f}%")
    return r


@pytest.mark.slow
def test_byol_trains_without_collapse_and_learns_what_its_views_share(trained_on_textures) -> None:
    """The online network learns to predict the target (loss ~4 -> ~1.5, cos(p, z') ~0 -> ~0.63) without
    collapsing, and its encoder learns the factor the two views share most: the dominant colour (84 -> 91%)."""
    r = trained_on_textures
    assert r["last"] < r["first"] - 2.0
    assert r["embedding_std"] > 0.06
    assert r["colour_trained"] > r["colour_random"] + 3.0


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="at this budget BYOL does not beat random init on the texture class "
                   "(65.2% vs 78.1%): with no negatives it amplifies the largest factor its views share, the "
                   "colour (and the brightness once hue is randomised), over the pattern; lower or higher tau, "
                   "predictor lr x10, wider heads, BYOL's blur/solarize views, 0.08 crops, SGD and 400 steps "
                   "did not close the gap (see the BYOL module docstring)")
def test_byol_beats_random_init_on_the_texture_class(trained_on_textures) -> None:
    r = trained_on_textures
    assert r["class_trained"] > r["class_random"] + 4.0
