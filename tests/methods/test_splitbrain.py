"""Split-brain autoencoder: each sub-network sees only its half of the Lab channels; bins; concatenated features;
learning (both predictions, and a probe of the concatenated features)."""

import pytest
import torch
import torch.nn.functional as F
from learning import tiny_encoder, tiny_spec
from pretext_data import coloured_objects
from pretext_learning import SMALL, learn, vit

from mmssl.color import rgb_to_lab
from mmssl.methods.colorization import lab_of
from mmssl.methods.splitbrain import SplitBrain, ab_input

SPEC = tiny_spec("image", patch=(8, 8), size=(32, 32))


def test_halves_see_only_their_channels_and_features_concatenate() -> None:
    method = SplitBrain(tiny_encoder(SPEC, depth=1, dim=32))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    lab = rgb_to_lab(x)
    other = lab.clone()
    other[:, 1:] = torch.randn(2, 2, 32, 32) * 20  # new colours, same lightness
    a1, b1 = method.encoder.halves(lab)
    a2, b2 = method.encoder.halves(other)
    # the L half never sees ab (measured exact); the ab half moves by 1.26 with the new colours
    assert torch.allclose(a1.tokens, a2.tokens, atol=1e-5) and not torch.allclose(b1.tokens, b2.tokens)
    tokens = SPEC.tokenize(SPEC.normalize(x))
    feats = method.encoder(tokens)
    assert feats.tokens.shape == (2, 16, 64) and method.encoder.dim == 64
    ab_t, l_t = method.targets(lab)
    assert ab_t.shape == l_t.shape == (2, 8, 8) and int(ab_t.max()) < 313 and int(l_t.max()) < 100
    out = method({"image": tokens})
    out.loss.backward()
    assert torch.isclose(out.loss, out.logs["loss_ab"] + out.logs["loss_l"])  # the same float32 sum: exact
    assert method.encoder.ab_net.patch_embed.proj.weight.grad is not None


def _ab_accuracy(method: SplitBrain, batch: dict) -> float:
    """Held-out accuracy of F1's ab bin (from L) on coloured cells (the grey ground is trivial)."""
    lab = lab_of(batch["image"], method.modality)
    ab_target, _ = method.targets(lab)
    fg = F.avg_pool2d(lab[:, 1:], method.out_stride).norm(dim=1) > 15  # (B, h, w) coloured cells
    first, _ = method.encoder.halves(lab)
    return float((method.ab_head(first, tuple(ab_target.shape[-2:])).argmax(1) == ab_target)[fg].float().mean())


def _held_out_entropy(logits: torch.Tensor, target: torch.Tensor, train_target: torch.Tensor) -> tuple[float, float]:
    """Held-out cross-entropy (nats per cell) of the predictions and of the best constant prediction (the training
    cells' bin frequencies, add-one smoothed)."""
    counts = torch.bincount(train_target.flatten(), minlength=logits.shape[1]).float() + 1
    constant = -torch.log(counts / counts.sum())[target].mean()
    return float(F.cross_entropy(logits.float(), target)), float(constant)


@pytest.mark.slow
def test_splitbrain_learns_coloured_objects() -> None:
    method = SplitBrain(vit(SMALL))
    r = learn(method, _ab_accuracy, steps=200, lr=2e-3, batch_size=32, spec=SMALL, data=coloured_objects)
    # both sub-networks on held-out images, against the best constant prediction of their bins
    x, _ = coloured_objects(1280, size=32, generator=torch.Generator().manual_seed(0))
    lab = rgb_to_lab(x)
    ab_target, l_target = method.targets(lab)
    size = tuple(l_target.shape[-2:])
    with torch.no_grad():
        first, second = method.encoder.halves(lab[1024:])
        ab_ce, ab_const = _held_out_entropy(method.ab_head(first, size), ab_target[1024:], ab_target[:1024])
        l_ce, l_const = _held_out_entropy(method.l_head(second, size), l_target[1024:], l_target[:1024])
    print(f"\nSplit-brain: loss {r['first']:.3f} -> {r['last']:.3f} ({r['secs']:.1f}s); held-out cross-entropy "
          f"L->ab {ab_ce:.3f} vs constant {ab_const:.3f}, ab->L {l_ce:.3f} vs constant {l_const:.3f}; ab bin "
          f"accuracy on coloured cells {r['pretext']:.1f}%; concatenated features k-NN top-1 trained "
          f"{r['trained']:.1f}% vs random init {r['random']:.1f}%, linear probe {r['linear']:.1f}% vs "
          f"{r['linear_random']:.1f}%")
    # measured: cross-entropy L->ab 1.29 vs 1.85, ab->L 3.33 vs 4.12; k-NN 91.8% vs 69.5%, linear 99.2% vs 93.4%
    # (the random ab half already reads the hue, which names two classes: the linear probe starts near its ceiling,
    # so its margin is also stated as the error it removes)
    assert r["last"] < 0.8 * r["first"]
    assert ab_ce < ab_const - 0.2 and l_ce < l_const - 0.2
    assert r["trained"] > r["random"] + 10.0
    assert r["linear"] > r["linear_random"] + 3.0 and 100 - r["linear"] < 0.5 * (100 - r["linear_random"])


def test_forward_cnn() -> None:
    from mmssl.models.cnn import CNNEncoder

    encoder = CNNEncoder("resnet10t", modality={"name": "image", "patch": [8, 8], "size": [64, 64]})
    method = SplitBrain(encoder)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = method({"image": encoder.modality.tokenize(encoder.modality.normalize(x))})
    out.loss.backward()
    assert torch.isfinite(out.loss) and method.encoder.dim == 2 * encoder.dim
    assert any(p.grad is not None for p in method.encoder.ab_net.parameters())
