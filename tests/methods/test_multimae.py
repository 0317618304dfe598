"""MultiMAE: Dirichlet split with exact K, per-modality adapters and decoders, masked MSE / L1 / CE, learning."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from learning import knn_top1, snapshot, tiny_encoder, tiny_spec, train
from PIL import Image

from mmssl.losses import norm_pix_target
from mmssl.methods.multimae import MultiMAE, per_sample_masked_mean
from mmssl.models import ClassPatchEmbed, LinearPatchEmbed
from mmssl.tokens import Tokens

RGB = tiny_spec("image", patch=(8, 8), size=(32, 32))
DEPTH = tiny_spec("depth", patch=(8, 8), size=(32, 32))
SEMSEG = replace(tiny_spec("semseg", patch=(2, 2), size=(8, 8)), num_classes=5)  # stride 4: 4x4 grid


def _method(**kwargs) -> MultiMAE:
    kwargs = {"decoder_dim": 32, "decoder_heads": 4, **kwargs}
    return MultiMAE(tiny_encoder(RGB, depth=1, dim=32), domains=(RGB, DEPTH, SEMSEG), num_encoded=8, **kwargs)


def _batch(b: int = 3) -> dict:
    return {"image": RGB.tokenize(torch.randn(b, 3, 32, 32)), "depth": DEPTH.tokenize(torch.randn(b, 1, 32, 32)),
            "semseg": SEMSEG.tokenize(torch.randint(0, 5, (b, 8, 8)))}


def test_dirichlet_split_keeps_exactly_num_encoded() -> None:
    method = _method()
    masks = method.masks(_batch(16))
    assert [m.shape for m in masks] == [(16, 16)] * 3
    visible = torch.stack([(~m).sum(1) for m in masks], dim=1)  # (B, 3) per-modality visible counts
    assert (visible.sum(1) == 8).all()
    assert len(set(map(tuple, visible.tolist()))) > 1  # the split varies between samples
    pipeline = {k: t.with_mask(torch.rand(3, 16).argsort(1).argsort(1) < 12) for k, t in _batch().items()}
    assert all(torch.equal(m, pipeline[k].mask) for m, k in zip(method.masks(pipeline), method.names))


def test_adapters_decoders_and_global_token() -> None:
    method = MultiMAE(tiny_encoder(RGB, depth=1, dim=32), domains=(RGB, DEPTH, SEMSEG))
    assert isinstance(method.adapters["semseg"], ClassPatchEmbed)
    assert isinstance(method.adapters["depth"], LinearPatchEmbed) and "image" not in method.adapters
    assert method.encoder.num_prefix == 1 and method.masking.visible == 98 and method.masking.alpha == 1.0
    for name, dec in method.decoders.items():
        assert len(dec.cross) == 1 and dec.cross[0].attn is None and len(dec.blocks) == 2
        assert dec.queries.proj.out_features == 256 and dec.cross[0].cross.heads == 8
    assert method.decoders["semseg"].head.pred.out_features == 4 * 5  # 2x2 cells x 5 classes


def test_losses_are_masked_mse_l1_and_ce_per_sample() -> None:
    method = _method()
    batch = _batch()
    masks = method.masks(batch)
    preds = {k: v.detach() for k, v in method.predict(batch, masks).items()}
    method.masks = lambda b: masks
    method.predict = lambda b, m: preds
    out = method(batch)

    def per_sample(values, mask):  # MultiMAE's criterion: mean over a sample's hidden cells, nanmean over samples
        m = mask.float()
        return ((values * m).sum(1) / m.sum(1)).nanmean()

    rgb = per_sample(((preds["image"] - batch["image"].patches) ** 2).mean(-1), masks[0])
    depth = per_sample((preds["depth"] - batch["depth"].patches).abs().mean(-1), masks[1])
    logits = preds["semseg"].reshape(3, 16, 4, 5)
    ce = F.cross_entropy(logits.permute(0, 3, 1, 2), batch["semseg"].patches, reduction="none").mean(-1)  # (B, N)
    semseg = per_sample(ce, masks[2])
    # the same float32 losses re-computed (~4 in all): measured exact; 1e-5 allows another reduction order
    assert torch.allclose(out.logs["loss_image"], rgb, atol=1e-5)
    assert torch.allclose(out.logs["loss_depth"], depth, atol=1e-5)
    assert torch.allclose(out.logs["loss_semseg"], semseg, atol=1e-5)
    assert torch.allclose(out.loss, rgb + depth + semseg, atol=1e-5)
    # visible cells do not count
    bumped = {k: torch.where((~m).unsqueeze(-1), v + 9.0, v) for (k, v), m in zip(preds.items(), masks)}
    method.predict = lambda b, m: bumped
    assert torch.allclose(method(batch).loss, out.loss, atol=1e-5)  # measured exact; +9 on visible cells would show


def test_per_sample_masked_mean_skips_samples_without_hidden_tokens() -> None:
    values = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    assert per_sample_masked_mean(values, torch.tensor([[True, True], [False, False]])) == 2.0
    assert per_sample_masked_mean(values, torch.zeros(2, 2, dtype=torch.bool)) == 0.0


def test_gradients_reach_encoder_and_adapters_and_rgb_encoder_stands_alone() -> None:
    method = _method()
    batch = _batch()
    method(batch).loss.backward()
    assert method.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert method.encoder.cls_token.grad.abs().sum() > 0
    assert method.adapters["semseg"].classes.weight.grad.abs().sum() > 0
    assert method.encoder(batch["image"]).tokens.shape == (3, 16, 32)


def test_figure_one_row_per_modality(tmp_path) -> None:
    path = _method().figure(_batch(2), tmp_path / "multimae.png", samples=1)
    with Image.open(path) as img:
        assert img.height > 3 * 96 and img.height < 4 * 96 + 60


@pytest.mark.slow
def test_multimae_learns_scenes() -> None:
    from synthetic import scenes

    torch.manual_seed(0)
    rgb, depth, semseg, y = scenes(1280, size=32, stride=4, generator=torch.Generator().manual_seed(0))
    sem = replace(SEMSEG, num_classes=5)
    data = {"image": RGB.tokenize(RGB.normalize(rgb)), "depth": DEPTH.tokenize(DEPTH.normalize(depth)),
            "semseg": sem.tokenize(semseg)}
    n_train = 1024

    def part(index):
        return {k: Tokens(patches=t.patches[index], grid=t.grid, patch=t.patch, modality=k) for k, t in data.items()}

    # norm_pix RGB targets, as the reference run's extra norm-pix RGB loss (`extra_norm_pix_loss`)
    method = MultiMAE(tiny_encoder(RGB, depth=2, dim=64), domains=(RGB, DEPTH, sem), num_encoded=12,
                      decoder_dim=64, decoder_heads=4, norm_pix_loss=True)
    random_init = snapshot(method.encoder)
    first, last, secs = train(method, part, n_train, steps=400, lr=1.5e-3)
    held = part(slice(n_train, None))
    with torch.no_grad():
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(1)
        masks = method.masks(held)
        torch.random.set_rng_state(gen_state)
        preds = method.predict(held, masks)
        target = norm_pix_target(held["image"].patches)  # each patch's own mean maps to 0 here
        err = float(per_sample_masked_mean(((preds["image"] - target) ** 2).mean(-1), masks[0]))
        base = float(per_sample_masked_mean((target ** 2).mean(-1), masks[0]))
    train_t, test_t = data["image"], held["image"]
    train_t = Tokens(patches=train_t.patches[:n_train], grid=train_t.grid, patch=train_t.patch, modality="image")
    trained = knn_top1(method.encoder, train_t, y[:n_train], test_t, y[n_train:])
    rand = knn_top1(random_init, train_t, y[:n_train], test_t, y[n_train:])
    print(f"\nMultiMAE: loss {first:.3f} -> {last:.3f} ({secs:.1f}s); held-out RGB norm-pix masked MSE {err:.3f} vs patch "
          f"mean {base:.3f}; k-NN top-1 (RGB only) trained {trained:.1f}% vs random init {rand:.1f}%")
    # `base` predicts each patch's mean: the decoder must do 10 % better (not re-measured with these comments; the test
    # prints it). README's short run: k-NN (RGB) 86.3 vs 65.2 at random init
    assert err < 0.9 * base
    assert trained > rand
