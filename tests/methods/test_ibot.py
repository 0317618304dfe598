"""iBOT: patch loss written out, [CLS] + patch loss of a forward, mask tokens hide content from the student only,
iBOT's per-image prediction ratios, shared and untied heads, centres, and learning."""

import math

import pytest
import torch
import torch.nn.functional as F
from learning import tiny_encoder, tiny_spec

from mmssl.methods.dino import multicrop_cross_entropy
from mmssl.methods.ibot import IBOT, masked_patch_cross_entropy
from mmssl.tokens import RandomMask, Tokens

SPEC = tiny_spec("image", patch=(8, 8), size=(32, 32))


def _method(**kwargs) -> IBOT:
    torch.manual_seed(0)
    opts = dict(out_dim=40, patch_out_dim=40, hidden_dim=32, bottleneck_dim=16) | kwargs
    return IBOT(tiny_encoder(SPEC, depth=1, dim=32, heads=2), **opts)


def _views(b: int = 3, local: int = 2, masked: bool = True, seed: int = 0) -> list[Tokens]:
    g = torch.Generator().manual_seed(seed)
    glob = [SPEC.tokenize(torch.randn(b, 3, 32, 32, generator=g)) for _ in range(2)]
    if masked:  # masks drawn by the pipeline: the method uses them as they are
        glob = [v.with_mask(RandomMask(0.5)(b, v.grid, generator=g)) for v in glob]
    return glob + [SPEC.tokenize(torch.randn(b, 3, 16, 16, generator=g)) for _ in range(local)]


def test_patch_loss_is_the_formula() -> None:
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    m = int(mask.sum())
    teacher = F.softmax(torch.randn(m, 6, generator=g), dim=-1)
    student = torch.randn(m, 6, generator=g)
    per_image, row = [], 0
    for i in range(3):  # each image: mean over its masked cells of -sum_k P_t log P_s; 0 when none are masked
        cells = int(mask[i].sum())
        ce = 0.0
        for _ in range(cells):
            log_p = student[row] / 0.1 - torch.logsumexp(student[row] / 0.1, dim=0)
            ce += float(-(teacher[row] * log_p).sum())
            row += 1
        per_image.append(ce / max(cells, 1))
    got = masked_patch_cross_entropy(teacher, student, mask, student_temp=0.1)
    assert float(got) == pytest.approx(sum(per_image) / 3, abs=1e-5)  # float32 loss ~10: measured 2.6e-7


def test_forward_is_cls_plus_patch_loss_with_centres() -> None:
    method = _method(teacher_temp=0.07, teacher_patch_temp=0.07, teacher_temp_warmup=0.0)
    method.centering.center.normal_(0, 0.1)
    method.patch_centering.center.normal_(0, 0.1)
    c1, c2 = method.centering.center.clone(), method.patch_centering.center.clone()
    views = _views()
    out = method(dict(views=views))
    full = [Tokens(patches=v.patches, grid=v.grid, patch=v.patch, modality="image") for v in views[:2]]
    mask = torch.cat([v.mask for v in views[:2]])
    with torch.no_grad():
        joined = Tokens(patches=torch.cat([v.patches for v in full]), grid=(4, 4), patch=(8, 8), modality="image")
        pooled, cells = method.encode_masked(joined, mask)
        student = list(method.head(pooled).chunk(2)) + [method.head(method.encoder(v).pooled) for v in views[2:]]
        t = method.teacher(joined)  # the teacher sees the unmasked views
        t_cls, t_patch = method.teacher_head(t.pooled), method.teacher_head(t.tokens)
        cls = multicrop_cross_entropy(F.softmax((t_cls - c1) / 0.07, -1).chunk(2), student, student_temp=0.1)
        p_t = F.softmax((t_patch - c2) / 0.07, dim=-1)  # (2B, N, K)
        log_p_s = F.log_softmax(method.head(cells) / 0.1, dim=-1)
        per_image = (-(p_t * log_p_s).sum(-1) * mask).sum(1) / mask.sum(1).clamp(min=1)
    # the same float32 computation re-run, losses ~5 and ~4 (measured <= 9.5e-7, an ulp or two; allclose's rtol
    # adds 5e-5); centres: EMA of logits < 1 (measured 7e-9)
    assert torch.allclose(out.logs["cls_loss"], cls, atol=1e-5)
    assert torch.allclose(out.logs["patch_loss"], per_image.mean(), atol=1e-5)
    assert torch.allclose(out.loss, cls + per_image.mean(), atol=1e-5)  # lambda1 = lambda2 = 1
    assert torch.allclose(method.centering.center, 0.9 * c1 + 0.1 * t_cls.mean(0), atol=1e-5)
    assert torch.allclose(method.patch_centering.center, 0.9 * c2 + 0.1 * t_patch.mean(1).mean(0), atol=1e-5)
    assert out.logs["mask_ratio"] == pytest.approx(0.5)  # 8 of 16 cells: a float32 0.5, exact


def test_masked_content_is_hidden_from_the_student_but_not_the_teacher() -> None:
    method = _method()
    tokens = _views(b=2)[0]
    mask = tokens.mask
    changed = tokens.patches.clone()
    changed[mask] += 5.0  # alter only what the student must not see
    other = Tokens(patches=changed, grid=tokens.grid, patch=tokens.patch, modality="image")
    with torch.no_grad():
        a = method.encode_masked(Tokens(patches=tokens.patches, grid=(4, 4), patch=(8, 8), modality="image"), mask)
        b = method.encode_masked(other, mask)
        # masked cells are replaced before the encoder sees them: measured bit-exact; the bound allows only another
        # reduction order, while leaked content (+5) moves features by O(1) (the teacher's: 2.5)
        assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)
        t_a = method.teacher(Tokens(patches=tokens.patches, grid=(4, 4), patch=(8, 8), modality="image")).pooled
        assert not torch.allclose(t_a, method.teacher(other).pooled)
    method({"views": _views()}).loss.backward()
    assert method.mask_token.grad.abs().sum() > 0  # the mask token is learned


def test_local_views_are_never_masked_and_student_gets_all_cells() -> None:
    method = _method()
    seen = []
    method.encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].visible))
    method({"views": _views(local=2)})
    assert seen == [None]  # only the local views go through forward(); the global ones through encode_masked


def test_prediction_ratios_follow_ibot() -> None:
    method = _method()  # pred_ratio (0, 0.3) with var (0, 0.2)
    torch.manual_seed(1)
    masks = method.sample_masks(200, (14, 14), torch.device("cpu"))
    ratios = masks.float().mean(1)
    unmasked = (ratios == 0).float().mean()
    # half of the images are clean: over 200 images sd 0.035, so +-0.15 is 4.2 sd (measured 0.495)
    assert 0.35 < float(unmasked) < 0.65
    masked = ratios[ratios > 0]
    # U(0.1, 0.5) of the cells, rounded down: the least is 19 / 196 = 0.097 (measured 0.107 to 0.495)
    assert float(masked.min()) >= 0.09 and float(masked.max()) <= 0.5
    # mean 0.3 (less ~0.003 rounding); sd of the mean over ~100 images 0.115 / 10, so +-0.05 is 4.3 sd (measured 0.303)
    assert 0.25 < float(masked.mean()) < 0.35


def test_shared_and_untied_heads() -> None:
    shared = _method()
    assert shared.patch_head is None and shared.teacher_patch_head is None
    untied = _method(shared_head=False, patch_out_dim=24, centering="sinkhorn", koleo_weight=0.1)
    assert untied.patch_head.last_layer.weight_v.shape == (24, 16)
    out = untied({"views": _views()})
    out.loss.backward()
    assert untied.patch_head.mlp[0].weight.grad.abs().sum() > 0 and "koleo" in out.logs
    with torch.no_grad():
        for p in untied.patch_head.parameters():
            p.add_(1.0)
    before = [p.clone() for p in untied.teacher_patch_head.parameters()]
    untied.update(0.0)  # momentum 0.996: the untied teacher head moves too
    moved = [not torch.equal(a, b) for a, b in zip(before, untied.teacher_patch_head.parameters())]
    assert any(moved)
    with pytest.raises(ValueError, match="shared head"):
        _method(patch_out_dim=24)


def test_last_layers_frozen_and_schedules() -> None:
    method = _method(freeze_last_layer=0.2, teacher_temp=0.07, teacher_patch_temp=0.06, teacher_temp_warmup=0.5)
    method({"views": _views()}).loss.backward()
    assert torch.count_nonzero(method.head.last_layer.weight_v.grad) == 0
    method.update(0.25)
    # float32 temperatures half-way through the warmup: ~1e-9 off, approx's 1e-6 relative
    assert float(method.temperature("cls")) == pytest.approx(0.055)
    assert float(method.temperature("patch")) == pytest.approx(0.05)
    method.zero_grad()
    method({"views": _views(masked=False)}).loss.backward()  # masks drawn by the method itself
    assert method.head.last_layer.weight_v.grad.abs().sum() > 0
    assert math.isfinite(float(method.progress))


@pytest.mark.slow
def test_ibot_learns_textures() -> None:
    from learning import snapshot
    from multicrop import multicrop_views, pooled_knn_top1, train_views
    from synthetic import textures

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster on a shared 2-core machine, and one float order
    try:
        x, y = textures(1280, generator=torch.Generator().manual_seed(0))
        tokens = SPEC.tokenize(SPEC.normalize(x))
        train_t, test_t = (Tokens(patches=tokens.patches[s], grid=tokens.grid, patch=tokens.patch, modality="image")
                           for s in (slice(0, 1024), slice(1024, None)))
        torch.manual_seed(0)
        method = IBOT(tiny_encoder(SPEC, depth=2, dim=64), out_dim=256, patch_out_dim=256, hidden_dim=256,
                      bottleneck_dim=64, teacher_temp=0.04, teacher_patch_temp=0.04, teacher_temp_warmup=0.0,
                      freeze_last_layer=0.0, momentum=0.99)
        random_init = snapshot(method.encoder)
        history, secs = train_views(method, lambda i, g: {"views": multicrop_views(x[i], SPEC, g, local_views=2)},
                                    1024, steps=150, lr=2e-3)
        trained = pooled_knn_top1(method.encoder, train_t, y[:1024], test_t, y[1024:])
        rand = pooled_knn_top1(random_init, train_t, y[:1024], test_t, y[1024:])
        last = {k: sum(h[k] for h in history[-10:]) / 10 for k in history[0]}
        print(f"\niBOT: [CLS] loss {history[0]['cls_loss']:.3f} -> {last['cls_loss']:.3f}, patch loss "
              f"{history[0]['patch_loss']:.3f} -> {last['patch_loss']:.3f} ({secs:.1f}s); teacher batch entropy "
              f"{last['teacher_batch_entropy']:.2f}; [CLS] k-NN top-1 {trained:.1f}% vs random init {rand:.1f}%")
        # README's short run: 91.8 vs 87.1 at random init, a margin of 4.7 points (12 of 256 test images); the
        # bound asks for 3 points, 8 images (not re-measured with these comments; the test prints both)
        assert last["loss"] < history[0]["loss"]
        assert trained > rand + 3.0
    finally:
        torch.set_num_threads(threads)


def test_tiny_config_runs_two_steps(tmp_path) -> None:
    from config_runs import check_first_loss, image_shards, two_steps

    summary = two_steps("image/ibot_tiny", image_shards(tmp_path), tmp_path / "runs")
    assert summary["steps"] == 2 and math.isfinite(summary["last_loss"])
    check_first_loss("image/ibot_tiny", summary)
    assert float(summary["method"].progress) == 1.0
