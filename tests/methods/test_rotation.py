"""RotNet: every rotation of every image in the batch with its label, 2/4/8-way variants, ViT and CNN, learning."""

import math

import pytest
import torch
from pretext_learning import SPEC, learn, vit

from mmssl.models.cnn import CNNEncoder
from mmssl.methods.rotation import Rotation
from mmssl.pretext import all_rotations, rotate


def test_batches_hold_all_four_rotations_with_their_labels() -> None:
    x = torch.randn(3, 3, 8, 8)
    images, labels = all_rotations(x)
    assert images.shape == (12, 3, 8, 8)
    assert labels.tolist() == [0, 1, 2, 3] * 3
    for i in range(3):
        for k in range(4):
            # label k = k quarter turns counter-clockwise, written out with transposes and flips
            expected = x[i]
            for _ in range(k):
                expected = expected.transpose(-2, -1).flip(-2)
            assert torch.equal(images[4 * i + k], expected)


def test_two_and_eight_rotation_variants() -> None:
    x = torch.randn(2, 3, 16, 16)
    images, labels = all_rotations(x, rotations=2)
    assert labels.tolist() == [0, 1, 0, 1] and torch.equal(images[1], x[0].flip(-2).flip(-1))  # 180 degrees
    images, labels = all_rotations(x, rotations=8)
    assert labels.tolist() == list(range(8)) * 2
    assert torch.equal(images[2], torch.rot90(x[0], 1, dims=(-2, -1)))  # step 2 of 8 = 90 degrees, exact
    # 45 degrees: a dot right of the centre moves up-right, corners are empty
    dot = torch.zeros(1, 1, 33, 33)
    dot[..., 16, 26] = 1.0
    turned = rotate(dot, 1, rotations=8)[0, 0]
    y, x_ = divmod(int(turned.argmax()), 33)
    # the brightest pixel of the turned dot is within a pixel of the exact position (measured 0.07 px off)
    assert abs(y - (16 - 10 / math.sqrt(2))) <= 1 and abs(x_ - (16 + 10 / math.sqrt(2))) <= 1
    assert float(rotate(torch.ones(1, 1, 33, 33), 1, rotations=8)[0, 0, 0, 0]) == 0.0
    with pytest.raises(ValueError, match="2, 4 or 8"):
        Rotation(vit(depth=1, dim=32), rotations=3)


@pytest.mark.parametrize("rotations", [2, 4, 8])
def test_forward_vit(rotations: int) -> None:
    method = Rotation(vit(depth=1, dim=32), rotations=rotations)
    out = method({"image": SPEC.tokenize(torch.randn(3, 3, 48, 48))})
    assert out.loss.dim() == 0 and {"loss", "rotation_acc"} <= set(out.logs)
    assert abs(float(out.loss.detach()) - math.log(rotations)) < 1.0  # near chance at init (measured <= 0.065 off)
    out.loss.backward()
    assert method.encoder.patch_embed.proj.weight.grad.abs().sum() > 0


def test_forward_cnn_and_mlp_head() -> None:
    encoder = CNNEncoder("resnet10t", modality={"name": "image", "patch": [8, 8], "size": [32, 32]})
    method = Rotation(encoder, hidden_dim=32)
    out = method({"image": encoder.modality.tokenize(torch.randn(2, 3, 32, 32))})
    out.loss.backward()
    assert torch.isfinite(out.loss) and any(p.grad is not None for p in encoder.parameters())


def _accuracy(method: Rotation, batch: dict) -> float:
    images, labels = all_rotations(batch["image"].image())
    return float((method.logits(images).argmax(1) == labels).float().mean())


@pytest.mark.slow
def test_rotation_learns_upright_objects() -> None:
    r = learn(Rotation(vit()), _accuracy, steps=150, lr=2e-3, batch_size=16)
    print(f"\nRotNet: loss {r['first']:.3f} -> {r['last']:.3f} ({r['secs']:.1f}s); held-out rotation acc "
          f"{r['pretext']:.1f}% (chance 25%); k-NN top-1 trained {r['trained']:.1f}% vs random init {r['random']:.1f}%; "
          f"linear probe {r['linear']:.1f}% vs {r['linear_random']:.1f}%")
    assert r["pretext"] > 60.0  # chance 25 %
    # measured: 100% held-out, k-NN 43.4% vs 28.1%, linear 59.8% vs 37.9%
    assert r["trained"] > r["random"] + 8.0
    assert r["linear"] > r["linear_random"] + 10.0


def test_tiny_config_runs_two_steps(tmp_path) -> None:
    from config_runs import check_first_loss, image_shards, two_steps

    summary = two_steps("image/rotation_tiny", image_shards(tmp_path), tmp_path / "runs")
    assert summary["steps"] == 2 and math.isfinite(summary["last_loss"])
    check_first_loss("image/rotation_tiny", summary)
    assert isinstance(summary["method"], Rotation)
