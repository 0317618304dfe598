"""SiamMAE: past frame unmasked, future 95 % masked, cross(-self) decoder, loss on future hidden patches, learning."""

from dataclasses import replace

import pytest
import torch
from learning import knn_top1, snapshot, tiny_encoder, tiny_spec, train
from PIL import Image

from mmssl.losses import masked_mse, norm_pix_target
from mmssl.methods.siammae import SiamMAE
from mmssl.tokens import RandomMask, Tokens

SPEC = tiny_spec("image", patch=(4, 4), size=(32, 32))  # grid (8, 8): 95 % masking keeps 3 of 64


def _method(**kwargs) -> SiamMAE:
    return SiamMAE(tiny_encoder(SPEC, depth=1, dim=32), decoder_dim=32, decoder_depth=2, decoder_heads=4, **kwargs)


def _frames(b: int = 3) -> list[Tokens]:
    return [SPEC.tokenize(torch.randn(b, 3, 32, 32)) for _ in range(2)]


def test_masks_past_visible_future_95_percent_hidden() -> None:
    method = _method()
    past, future = _frames(4)
    past = past.with_mask(RandomMask(0.5)(4, past.grid))  # even a masked past frame is shown whole
    p, f = method.frames({"frames": [past, future]})
    assert p.visible is None and not p.mask.any()
    assert f.visible.shape == (4, int(64 * (1 - 0.95))) and (f.mask.sum(1) == 61).all()
    with pytest.raises(ValueError, match="past, future"):
        method.frames({"frames": _frames() + _frames()[:1]})


def test_decoder_variants() -> None:
    cross_self = SiamMAE(tiny_encoder(SPEC, depth=1, dim=32)).decoder
    assert cross_self.cross[0].attn is not None and len(cross_self.cross) == 4
    assert cross_self.queries.proj.out_features == 256 and cross_self.cross[0].cross.heads == 8
    assert _method(cross_self=False).decoder.cross[0].attn is None


def test_loss_on_future_hidden_patches_only_and_past_matters() -> None:
    method = _method()
    past, future = method.frames({"frames": _frames()})
    batch = {"frames": [past, future]}
    pred = method.predict(past, future)
    assert pred.shape == (3, 64, 48)
    # the future prediction depends on the past frame through cross-attention
    other = replace(past, patches=past.patches + 1.0)
    assert not torch.allclose(method.predict(other, future), pred)  # measured 3.0 apart
    fixed = pred.detach()
    method.predict = lambda p, f: fixed
    base = method(batch).loss
    target = norm_pix_target(future.patches)
    assert torch.allclose(base, ((fixed - target) ** 2).mean(-1)[future.mask].mean(), atol=1e-6)  # measured exact
    bumped = fixed.clone()
    bumped[~future.mask] += 10.0
    method.predict = lambda p, f: bumped
    assert torch.allclose(method(batch).loss, base)  # visible future patches do not count (measured exact)
    bumped = fixed.clone()
    bumped[future.mask] += 1.0
    method.predict = lambda p, f: bumped
    assert method(batch).loss > base


def test_gradients_reach_shared_encoder_from_both_frames() -> None:
    method = _method()
    past, future = method.frames({"frames": _frames()})
    future = future.with_mask(torch.ones_like(future.mask))  # no future token visible: only the past feeds in
    method({"frames": [past, future]}).loss.backward()
    assert method.encoder.patch_embed.proj.weight.grad.abs().sum() > 0


def test_figure_writes_png(tmp_path) -> None:
    path = _method().figure({"frames": _frames(2)}, tmp_path / "siammae.png")
    with Image.open(path) as img:
        assert img.width > 4 * 96


@pytest.mark.slow
def test_siammae_learns_moving_textures() -> None:
    from synthetic import moving_textures

    torch.manual_seed(0)
    clips, y = moving_textures(1280, frames=3, size=32, speed=2, generator=torch.Generator().manual_seed(0))
    n_train = 1024

    def part(tokens, index):
        return Tokens(patches=tokens.patches[index], grid=tokens.grid, patch=tokens.patch, modality="image")

    spec = tiny_spec("image", patch=(8, 8), size=(32, 32))  # 16 cells: 90 % masking keeps 1 future cell
    past = spec.tokenize(spec.normalize(clips[:, :, 0]))
    future = spec.tokenize(spec.normalize(clips[:, :, 2]))
    method = SiamMAE(tiny_encoder(spec, depth=2, dim=64), mask_ratio=0.9, decoder_dim=64, decoder_depth=2,
                     decoder_heads=4)
    random_init = snapshot(method.encoder)
    first, last, secs = train(method, lambda i: {"frames": [part(past, i), part(future, i)]}, n_train,
                              steps=500, lr=1.5e-3)
    test = slice(n_train, None)
    with torch.no_grad():
        p, f = method.frames({"frames": [part(past, test), part(future, test)]})
        target = norm_pix_target(f.patches)
        err = float(masked_mse(method.predict(p, f), target, f.mask))
        base = float(masked_mse(torch.zeros_like(target), target, f.mask))
    train_t, test_t = part(future, slice(0, n_train)), part(future, test)
    trained = knn_top1(method.encoder, train_t, y[:n_train], test_t, y[n_train:])
    rand = knn_top1(random_init, train_t, y[:n_train], test_t, y[n_train:])
    print(f"\nSiamMAE: loss {first:.3f} -> {last:.3f} ({secs:.1f}s); held-out future masked MSE {err:.3f} vs "
          f"patch mean {base:.3f}; k-NN top-1 trained {trained:.1f}% vs random init {rand:.1f}%")
    # `base` predicts each patch's mean: the decoder must do 10 % better (not re-measured with these comments; the test
    # prints it). README's short run: k-NN 78.5 vs 75.8 at random init, a margin of 2.7 points, so only the sign is
    # asserted
    assert err < 0.9 * base
    assert trained > rand
