"""MoCo v3: the symmetric 2T-scaled InfoNCE written out, frozen patch projection, momentum schedule, heads, learning."""

import math

import pytest
import torch
import torch.nn.functional as F
from learning import tiny_encoder, tiny_spec
from torch import nn

from mmssl.losses import info_nce
from mmssl.methods.mocov3 import MoCoV3

SPEC = tiny_spec("image", patch=(8, 8), size=(32, 32))


def _method(**kwargs) -> MoCoV3:
    return MoCoV3(tiny_encoder(SPEC, depth=1, dim=32), **{"dim": 16, "mlp_dim": 24, **kwargs})


def _views(b: int = 5) -> list:
    return [SPEC.tokenize(torch.randn(b, 3, 32, 32)) for _ in range(2)]


def _ctr_by_hand(q: torch.Tensor, k: torch.Tensor, t: float) -> float:
    """moco-v3 `contrastive_loss`: 2T * mean_i -log exp(q_i.k_i / T) / sum_j exp(q_i.k_j / T), normalised q, k."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    total = 0.0
    for i in range(q.shape[0]):
        scores = [math.exp(float(q[i] @ k[j]) / t) for j in range(k.shape[0])]
        total += -math.log(scores[i] / sum(scores))
    return 2 * t * total / q.shape[0]


def test_info_nce_and_contrast_are_the_formula() -> None:
    q, k = torch.randn(4, 6), torch.randn(4, 6)
    method = _method(temperature=0.3)
    # float32 against float64 of float32 dot products: ~1e-7 relative (measured 1.9e-8 and 1.3e-8)
    assert math.isclose(float(method.contrast(q, k)), _ctr_by_hand(q, k, 0.3), rel_tol=1e-5)
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    # with an offset the positives sit further down a longer (gathered) key list
    keys = torch.cat([F.normalize(torch.randn(4, 6), dim=1), kn])
    assert math.isclose(float(info_nce(qn, keys, temperature=0.3, offset=4)) * 0.6,
                        _ctr_by_hand(q, torch.cat([keys[4:], keys[:4]]), 0.3), rel_tol=1e-5)


def test_forward_is_symmetric_with_momentum_keys() -> None:
    method = _method()
    views = _views()
    out = method({"views": views})
    with torch.no_grad():
        q1, q2 = (method.predictor(method.projector(method.encoder(v).pooled)) for v in views)
        k1, k2 = (method.momentum_projector(method.momentum_encoder(v).pooled) for v in views)
        expected = _ctr_by_hand(q1, k2, 0.2) + _ctr_by_hand(q2, k1, 0.2)
    assert math.isclose(float(out.loss.detach()), expected, rel_tol=1e-4)  # as above, through the nets: 7.4e-8
    out.loss.backward()
    assert method.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.momentum_encoder.parameters())
    assert {"loss", "embedding_std", "momentum"} <= set(out.logs)


def test_patch_projection_stays_random() -> None:
    method = _method()
    assert not any(p.requires_grad for p in method.encoder.patch_embed.parameters())
    before = method.encoder.patch_embed.proj.weight.clone()
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-2)
    method({"views": _views()}).loss.backward()
    opt.step()
    method.update(0.5)
    assert torch.equal(method.encoder.patch_embed.proj.weight, before)
    # the momentum copy averages two equal weights: equal up to rounding
    assert torch.allclose(method.momentum_encoder.patch_embed.proj.weight, before, atol=1e-7)  # |w| <= 0.16: 1.5e-8
    assert _method(freeze_patch_embed=False).encoder.patch_embed.proj.weight.requires_grad


def test_momentum_rises_to_one_along_a_cosine() -> None:
    method = _method(momentum=0.99)
    for progress, expected in ((0.0, 0.99), (0.5, 0.995), (1.0, 1.0)):
        method.update(progress)
        # float64 schedule: a few 1e-16 of the closed form (measured exact)
        assert math.isclose(method.momentum, 1 - 0.5 * (1 + math.cos(math.pi * progress)) * 0.01, abs_tol=1e-12)
        assert math.isclose(method.momentum, expected, abs_tol=1e-12)
    for p in method.encoder.parameters():
        p.data.add_(1.0)
    frozen = [p.clone() for p in method.momentum_encoder.parameters()]
    method.update(1.0)  # m = 1 at the end: the momentum encoder no longer moves
    assert all(torch.equal(a, b) for a, b in zip(method.momentum_encoder.parameters(), frozen))


def test_heads_are_moco_v3s() -> None:
    method = _method()
    proj, pred = list(method.projector.mlp), list(method.predictor.mlp)
    assert [type(m) for m in proj] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear, nn.BatchNorm1d]
    assert not proj[-1].affine and all(m.bias is None for m in proj + pred if isinstance(m, nn.Linear))
    assert [type(m) for m in pred] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]  # no last BN
    assert proj[0].out_features == 24 and proj[-2].out_features == 16 and pred[-1].out_features == 16
    with torch.device("meta"):  # the 4096-wide defaults, without allocating them
        defaults = MoCoV3(tiny_encoder(SPEC, depth=1, dim=32))
    assert defaults.projector.out_dim == 256 and defaults.projector.mlp[0].out_features == 4096
    assert defaults.temperature == 0.2 and defaults.base_momentum == 0.99


@pytest.mark.slow
def test_mocov3_learns_textures() -> None:
    from twoviews import encoder, learn

    method = MoCoV3(encoder(), dim=64, mlp_dim=128, momentum=0.99, temperature=0.2)
    r = learn(method, steps=100, lr=2e-3)
    print(f"\nMoCo v3: loss {r['first']:.3f} -> {r['last']:.3f} ({r['secs']:.1f}s); k-NN top-1 trained "
          f"{r['trained']:.1f}% vs random init {r['random']:.1f}%")
    # README's short run: 90.6 vs 78.1 at random init, a margin of 12.5 points; the bound at 8 leaves 4.5
    assert r["last"] < r["first"]
    assert r["trained"] > r["random"] + 8.0
