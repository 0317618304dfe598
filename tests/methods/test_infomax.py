"""Deep InfoMax: the JSD and InfoNCE estimators written out, the MI network, the method, and learning."""

import math

import pytest
import torch
import torch.nn.functional as F
from learning import tiny_encoder, tiny_spec

from mmssl.methods.infomax import MINet, InfoMax, infonce_mi_loss, jsd_mi_loss

SPEC = tiny_spec("image", patch=(8, 8), size=(32, 32))


def _pairs(b: int = 4, n: int = 3, u: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, u, generator=g), torch.randn(b, u, generator=g)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def test_jsd_estimator_is_the_formula() -> None:
    local, glob = _pairs()
    b, n, _ = local.shape
    pos, neg = [], []
    for i in range(b):  # global of sample i against every cell of sample j
        for j in range(b):
            scores = [float(glob[i] @ local[j, c]) for c in range(n)]
            if i == j:  # joint: E_P[log 2 - softplus(-T)]
                pos.append(sum(math.log(2) - _softplus(-t) for t in scores) / n)
            else:  # marginals: E_Q[softplus(-T) + T - log 2]
                neg.append(sum(_softplus(-t) + t - math.log(2) for t in scores) / n)
    expected = sum(neg) / len(neg) - sum(pos) / len(pos)
    assert float(jsd_mi_loss(local, glob)) == pytest.approx(expected, abs=1e-5)  # float32 loss ~1.3: 1.4e-10


def test_infonce_estimator_is_the_formula() -> None:
    local, glob = _pairs()
    b, n, _ = local.shape
    total = 0.0
    for i in range(b):
        for c in range(n):
            positive = float(glob[i] @ local[i, c])
            negatives = [float(glob[i] @ local[j, d]) for j in range(b) if j != i for d in range(n)]
            logits = [positive] + negatives
            top = max(logits)
            total -= positive - (top + math.log(sum(math.exp(x - top) for x in logits)))
    assert float(infonce_mi_loss(local, glob)) == pytest.approx(total / (b * n), abs=1e-5)  # loss ~3.9: 7e-8


def test_estimators_reward_matching_pairs() -> None:
    """Locals that carry their own sample's global score better than shuffled ones, under both estimators."""
    g = torch.Generator().manual_seed(1)
    glob = F.normalize(torch.randn(8, 16, generator=g), dim=-1) * 3
    matched = glob.unsqueeze(1) + 0.1 * torch.randn(8, 4, 16, generator=g)
    shuffled = matched[torch.randperm(8, generator=g)]
    for loss in (jsd_mi_loss, infonce_mi_loss):
        assert float(loss(matched, glob)) < float(loss(shuffled, glob))


def test_mi_network_starts_near_identity_shortcut() -> None:
    net = MINet(8, 12)
    w = net.shortcut.weight.detach()
    # off the identity the shortcut is drawn from U(-0.01, 0.01): the bound is the init's (measured 0.0099)
    assert torch.equal(w.diagonal()[:8], torch.ones(8)) and float(w[8:].abs().max()) <= 0.01
    assert net(torch.randn(2, 5, 8)).shape == (2, 5, 12)


@pytest.mark.parametrize("estimator", ["jsd", "infonce"])
def test_method_forward_backward(estimator: str) -> None:
    torch.manual_seed(0)
    method = InfoMax(tiny_encoder(SPEC, depth=1, dim=32, heads=2), estimator=estimator, units=16)
    tokens = SPEC.tokenize(torch.randn(4, 3, 32, 32))
    out = method({"image": tokens})
    out.loss.backward()
    assert torch.isfinite(out.loss) and "embedding_std" in out.logs
    assert method.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert method.encoder.cls_token.grad.abs().sum() > 0  # the global feature is the [CLS]
    assert torch.isfinite(method({"views": [tokens]}).loss)  # a multi-view batch: the first view
    with pytest.raises(ValueError, match="estimator"):
        InfoMax(tiny_encoder(SPEC, depth=1, dim=32, heads=2), estimator="dv")


@pytest.mark.slow
def test_infomax_learns_textures() -> None:
    """Both estimators, 150 steps each on unaugmented textures; k-NN on mean-pooled tokens (the local features DIM
    trains) and on [CLS] (the global one)."""
    from learning import knn_top1, snapshot
    from multicrop import pooled_knn_top1, train_views
    from synthetic import textures

    from mmssl.tokens import Tokens

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster on a shared 2-core machine, and one float order
    try:
        x, y = textures(1280, generator=torch.Generator().manual_seed(0))
        tokens = SPEC.tokenize(SPEC.normalize(x))
        train_t, test_t = (Tokens(patches=tokens.patches[s], grid=tokens.grid, patch=tokens.patch, modality="image")
                           for s in (slice(0, 1024), slice(1024, None)))
        for estimator in ("jsd", "infonce"):
            torch.manual_seed(0)
            method = InfoMax(tiny_encoder(SPEC, depth=2, dim=64), estimator=estimator, units=64)
            random_init = snapshot(method.encoder)
            history, secs = train_views(method, lambda i, g: {"image": Tokens(
                patches=train_t.patches[i], grid=train_t.grid, patch=train_t.patch, modality="image")},
                1024, steps=150, lr=1e-3)
            mean_trained = knn_top1(method.encoder, train_t, y[:1024], test_t, y[1024:])
            mean_rand = knn_top1(random_init, train_t, y[:1024], test_t, y[1024:])
            cls_trained = pooled_knn_top1(method.encoder, train_t, y[:1024], test_t, y[1024:])
            cls_rand = pooled_knn_top1(random_init, train_t, y[:1024], test_t, y[1024:])
            first, last = history[0]["loss"], sum(h["loss"] for h in history[-10:]) / 10
            print(f"\nInfoMax {estimator}: loss {first:.3f} -> {last:.3f} ({secs:.1f}s); k-NN top-1 mean-pooled "
                  f"{mean_trained:.1f}% vs random init {mean_rand:.1f}%, [CLS] {cls_trained:.1f}% vs {cls_rand:.1f}%")
            assert last < first
            assert mean_trained > mean_rand + 5.0
    finally:
        torch.set_num_threads(threads)


def test_tiny_config_runs_two_steps(tmp_path) -> None:
    from config_runs import check_first_loss, image_shards, two_steps

    summary = two_steps("image/infomax_tiny", image_shards(tmp_path), tmp_path / "runs")
    assert summary["steps"] == 2 and math.isfinite(summary["last_loss"])
    check_first_loss("image/infomax_tiny", summary)
