import pytest
import torch

from mmssl.modalities import get_modality
from mmssl.models import TokenEncoder
from mmssl.tokens import RandomMask, TubeMask

TINY = dict(depth=2, dim=64, heads=4)


def _tokens(name: str, batch: int = 2):
    spec = get_modality(name)
    size = tuple(2 * p for p in spec.patch)
    if spec.categorical:
        x = torch.randint(0, spec.num_classes, (batch, *size))
    else:
        x = torch.randn(batch, spec.channels, *size)
    return spec.tokenize(x)


@pytest.mark.parametrize("name", ["image", "video", "audio", "depth", "semseg"])
def test_encoder_runs_on_every_modality_with_gradients_everywhere(name: str) -> None:
    enc = TokenEncoder("vit_tiny_patch16_224", modality=name, **TINY)
    tokens = _tokens(name)
    tokens = tokens.with_mask(RandomMask(0.5)(2, tokens.grid))
    out = enc(tokens)
    k = tokens.num_visible
    assert out.tokens.shape == (2, k, 64) and out.pooled.shape == (2, 64) and out.prefix.shape == (2, 1, 64)
    (out.tokens.square().mean() + out.pooled.sum()).backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"


def test_video_encoder_without_cls_uses_flat_sinusoid_and_mean_pool() -> None:
    enc = TokenEncoder("vit_tiny_patch16_224", modality="video", cls_token=False, pos_embed="sinusoid", **TINY)
    tokens = _tokens("video")
    tokens = tokens.with_mask(TubeMask(0.5)(2, tokens.grid))
    out = enc(tokens)
    assert out.prefix.shape == (2, 0, 64)
    assert torch.allclose(out.pooled, out.tokens.mean(1))  # the same mean: measured exact


def test_encoder_only_runs_visible_tokens_and_positions_follow_indices() -> None:
    enc = TokenEncoder("vit_tiny_patch16_224", modality="image", **TINY).eval()
    full = _tokens("image", batch=1)
    visible = torch.tensor([[0, 3]])
    sub = full.with_mask(torch.tensor([[False, True, True, False]]))
    assert torch.equal(sub.visible, visible)
    # encoding the two visible tokens equals embedding them by hand at their own positions
    x = enc.patch_embed(full.patches[:, [0, 3]]) + enc.positions(full.grid, full.patches)[[0, 3]]
    _, expect = enc.encode(x)
    # the same float32 blocks on the same two tokens (measured exact); outputs up to ~3, so 1e-6 (+ rtol 1e-5) allows
    # only another matmul blocking
    assert torch.allclose(enc(sub).tokens, expect, atol=1e-6)


def test_forward_dense_keeps_the_grid() -> None:
    enc = TokenEncoder("vit_tiny_patch16_224", modality="video", **TINY)
    dense = enc.forward_dense(_tokens("video"))
    assert dense.shape == (2, 64, 2, 2, 2)
    with pytest.raises(ValueError, match="every token visible"):
        t = _tokens("video")
        enc.forward_dense(t.with_mask(RandomMask(0.5)(2, t.grid)))


def test_named_sizes_follow_timm() -> None:
    enc = TokenEncoder("vit_small_patch16_224", modality="image", depth=1)
    assert (enc.dim, enc.heads, enc.depth) == (384, 6, 1)


def test_init_follows_mae() -> None:
    enc = TokenEncoder("vit_tiny_patch16_224", modality="image", **TINY)
    w = enc.blocks[0].mlp.fc1.weight
    bound = (6 / (w.shape[0] + w.shape[1])) ** 0.5
    # xavier-uniform: 16384 draws in [-bound, bound] all stay under 0.9 * bound with probability 0.9^16384 (measured
    # max 0.99995 * bound)
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.all(enc.blocks[0].mlp.fc1.bias == 0)
    # std 0.02 over 64 values: the sample std has sd ~0.02 / sqrt(128) = 0.0018, so +-0.01 is 5.6 sd (measured 0.022)
    assert 0.01 < enc.cls_token.std() < 0.03


def test_wrong_modality_and_unknown_name_are_clear_errors() -> None:
    enc = TokenEncoder("vit_tiny_patch16_224", modality="image", **TINY)
    with pytest.raises(ValueError, match="built for 'image'"):
        enc(_tokens("audio"))
    with pytest.raises(ValueError, match="unknown encoder"):
        TokenEncoder("vit_nonexistent_patch3", modality="image")
