"""VideoMAE: tube masking, the per-tubelet per-channel target written out, hidden-only loss, shapes, learning."""

import pytest
import torch
from learning import knn_top1, snapshot, tiny_encoder, tiny_spec, train
from PIL import Image

from mmssl.losses import masked_mse, norm_pix_target
from mmssl.methods.videomae import VideoMAE, tubelet_target
from mmssl.modalities.image import IMAGENET_MEAN, IMAGENET_STD
from mmssl.tokens import Tokens, TubeMask

SPEC = tiny_spec("video", patch=(2, 8, 8), size=(4, 32, 32))  # grid (2, 4, 4)


def _encoder(**kwargs):
    return tiny_encoder(SPEC, depth=1, dim=32, cls_token=False, pos_embed="sinusoid", **kwargs)


def _method(**kwargs) -> VideoMAE:
    return VideoMAE(_encoder(), decoder_dim=24, decoder_depth=1, decoder_heads=3, **kwargs)


def _tokens(b: int = 3) -> Tokens:
    return SPEC.tokenize(torch.randn(b, 3, 4, 32, 32))


def test_target_is_per_tubelet_per_channel_on_unnormalised_video() -> None:
    x = torch.randn(2, 3, 4, 32, 32)
    tokens = SPEC.tokenize(x)
    target = tubelet_target(tokens, SPEC)  # (B, N, V*C)
    mean = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1, 1)
    pixels = x * std + mean  # back to [0, 1] as VideoMAE's `unnorm_videos`
    for b, (t, i, j) in [(0, (0, 0, 0)), (1, (1, 2, 3)), (0, (1, 3, 1))]:
        n = (t * 4 + i) * 4 + j
        for c in range(3):
            v = pixels[b, c, 2 * t:2 * t + 2, 8 * i:8 * i + 8, 8 * j:8 * j + 8].reshape(-1)  # (t, h, w) order
            m = v.sum() / v.numel()
            s = (((v - m) ** 2).sum() / (v.numel() - 1)).sqrt()  # unbiased std
            expected = (v - m) / (s + 1e-6)
            got = target[b, n].reshape(128, 3)[:, c]  # channel last
            # float32 standardisation of 128 values, outputs ~ +-3: measured 4.8e-7 (4.1e-7 from float64)
            assert torch.allclose(got, expected, atol=1e-4)
    # not MAE's target: that one standardises over all channels together
    assert not torch.allclose(target, norm_pix_target(tokens.patches), atol=1e-2)  # they differ by 0.5 (measured)
    raw = tubelet_target(tokens, SPEC, normalize=False)
    assert torch.allclose(SPEC.normalize(Tokens(patches=raw, grid=tokens.grid, patch=tokens.patch,
                                                modality="video").image()), x, atol=1e-5)  # round trip, |x| < 5: 4.8e-7


def test_tube_mask_is_exact_and_tiled_over_time() -> None:
    tokens = _method().masked(_tokens(5))
    mask = tokens.mask.reshape(5, 2, 16)  # (B, T', H*W)
    assert torch.equal(mask[:, 0], mask[:, 1])  # one spatial mask for every temporal slice
    assert (mask.sum(-1) == int(0.9 * 16)).all()
    assert VideoMAE(_encoder()).masking == TubeMask(0.9)


def test_architecture_follows_videomae() -> None:
    with pytest.raises(ValueError, match="CLS"):
        VideoMAE(tiny_encoder(SPEC, depth=1, dim=32))
    method = VideoMAE(_encoder())
    dec = method.decoder
    assert dec.queries.proj.bias is None  # encoder_to_decoder has no bias
    assert dec.queries.pos_kind == "sinusoid" and method.encoder.pos_kind == "sinusoid"
    assert len(dec.blocks) == 4 and dec.queries.proj.out_features == 384 and dec.blocks[0].attn.heads == 6


def test_loss_counts_hidden_tokens_only_and_gradients_reach_encoder() -> None:
    method = _method()
    tokens = method.masked(_tokens())
    batch = {"video": tokens}
    pred = method.predict(tokens)
    assert pred.shape == (3, 32, 384)
    out = method(batch)
    out.loss.backward()
    assert method.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    fixed = pred.detach()
    method.predict = lambda t: fixed
    base = method(batch).loss
    bumped = fixed.clone()
    bumped[~tokens.mask] -= 50.0
    method.predict = lambda t: bumped
    assert torch.allclose(method(batch).loss, base)  # visible predictions do not count (measured exact)
    bumped = fixed.clone()
    bumped[tokens.mask.nonzero()[0].tolist()[0], tokens.mask.nonzero()[0].tolist()[1]] += 1.0
    method.predict = lambda t: bumped
    assert method(batch).loss > base


def test_figure_writes_png(tmp_path) -> None:
    path = _method().figure({"video": _tokens(2)}, tmp_path / "videomae.png")
    with Image.open(path) as img:
        assert img.width > 4 * 4 * 96  # 4 panels of 4 frames


@pytest.mark.slow
def test_videomae_learns_moving_textures() -> None:
    from synthetic import moving_textures

    torch.manual_seed(0)
    spec = tiny_spec("video", patch=(2, 8, 8), size=(4, 32, 32))  # grid (2, 4, 4); ratio .75 (UCF101) keeps 4 cells
    x, y = moving_textures(1280, frames=4, size=32, generator=torch.Generator().manual_seed(0))
    tokens = spec.tokenize(spec.normalize(x))
    n_train = 1024

    def part(index):
        return Tokens(patches=tokens.patches[index], grid=tokens.grid, patch=tokens.patch, modality="video")

    train_t, test_t = part(slice(0, n_train)), part(slice(n_train, None))
    enc = tiny_encoder(spec, depth=2, dim=64, cls_token=False, pos_embed="sinusoid")
    method = VideoMAE(enc, mask_ratio=0.75, decoder_dim=48, decoder_depth=2, decoder_heads=4)
    random_init = snapshot(enc)
    first, last, secs = train(method, lambda i: {"video": part(i)}, n_train, steps=500, lr=1.5e-3)
    with torch.no_grad():
        held = test_t.with_mask(TubeMask(0.75)(256, test_t.grid, generator=torch.Generator().manual_seed(1)))
        target = method.target(held)
        err = float(masked_mse(method.predict(held), target, held.mask))
        base = float(masked_mse(torch.zeros_like(target), target, held.mask))  # each tubelet's mean per channel
    trained = knn_top1(enc, train_t, y[:n_train], test_t, y[n_train:])
    rand = knn_top1(random_init, train_t, y[:n_train], test_t, y[n_train:])
    print(f"\nVideoMAE: loss {first:.3f} -> {last:.3f} ({secs:.1f}s); held-out masked MSE {err:.3f} vs tubelet "
          f"mean {base:.3f}; k-NN top-1 trained {trained:.1f}% vs random init {rand:.1f}%")
    # `base` predicts each tubelet's mean per channel: the decoder must do 10 % better (not re-measured with these
    # comments; the test prints it). README's short run: k-NN 87.9 vs 53.5 at random init, a margin of 34.4 points for a
    # bound of 5
    assert err < 0.9 * base
    assert trained > rand + 5.0
