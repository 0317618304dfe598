"""benchmarks/train_step.py on the CPU: the baseline computes ours' function, the figures it prints, the FLOP count,
the host-sync counter; and, where CUDA is present, the GPU-only checks (sync debug mode, bf16 vs fp16 losses)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.reference_models import use_sdpa
from benchmarks.steps import SPECS, OursStep, ReferenceStep, build_ours, build_reference, make_batches, step_flops
from benchmarks.train_step import check_losses, count_host_syncs, cuda_syncs, main, passed

CPU = torch.device("cpu")
TINY = ["mae-tiny", "videomae-tiny"]


def sides(key: str, device: torch.device = CPU, **kw):
    spec = SPECS[key]
    method = build_ours(spec).to(device)
    ours = OursStep(method, device=device, amp=None, compile=False, **kw)
    ref = ReferenceStep(build_reference(spec, method), spec, device=device, amp=None, **kw)
    return spec, ours, ref


@pytest.mark.parametrize("key", TINY)
def test_baseline_with_copied_weights_computes_our_loss_and_gradients(key):
    spec, ours, ref = sides(key)
    check = check_losses(spec, ours, ref, make_batches(spec, 3, 1, CPU)[0])
    assert check["fp32 rel diff"] < 1e-5 and check["grad norm rel diff"] < 1e-5
    assert 0.5 < check["fp32 ours"] < 5  # a real reconstruction loss, not a degenerate zero
    assert passed(check)


@pytest.mark.parametrize("key", TINY)
def test_loss_check_fails_when_the_baseline_computes_something_else(key):
    spec, ours, ref = sides(key)
    batch = make_batches(spec, 3, 1, CPU)[0]
    conv = ref.model.patch_embed.proj if not spec.video else ref.model.encoder.patch_embed.proj
    with torch.no_grad():  # ours' channel-last patch vectors read as channel-first: the mapping the copy must do
        conv.weight.copy_(ours.method.encoder.patch_embed.proj.weight.reshape(conv.weight.shape))
    assert not passed(check_losses(spec, ours, ref, batch))


@pytest.mark.parametrize("key", TINY)
def test_both_sides_train_alike(key):
    """Two optimiser steps each (fp32, no weight decay, a large lr) leave both models with the same loss."""
    spec, ours, ref = sides(key, lr=1e-3, weight_decay=0.0)
    batches = make_batches(spec, 3, 3, CPU, seed=1)
    for b in batches[:2]:
        ours(b)
        ref(b)
    with torch.no_grad():
        lo, lr_ = float(ours.loss(batches[2])), float(ref.loss(batches[2]))
        before = float(build_ours(spec)(batches[2].ours).loss)
    assert abs(lo - lr_) / lr_ < 1e-4
    assert abs(lo - before) / before > 1e-3  # the steps changed the model: the comparison is not of untouched ones


@pytest.mark.parametrize("key", TINY)
def test_step_flops_equal_the_flop_counter(key):
    spec = SPECS[key]
    method = build_ours(spec)
    batch = make_batches(spec, 3, 1, CPU)[0]
    use_sdpa(method, False)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:  # attention as counted matmuls
        method(batch.ours).loss.backward()
    assert counter.get_total_flops() == pytest.approx(step_flops(spec, method, 3), rel=1e-9)


def test_full_size_flops_are_vit_b_sized():
    """MAE ViT-B/16 at mask .75: the encoder sees 50 tokens, the 8-block decoder 197; about 3 x 17 GFLOP/image."""
    method = build_ours(SPECS["mae"])
    per_image = step_flops(SPECS["mae"], method, 1)
    assert 45e9 < per_image < 60e9


def test_host_sync_counter_sees_item_and_boolean_indexing_only():
    x, mask = torch.randn(4, 5, 3), torch.rand(4, 5) > 0.5
    assert count_host_syncs(lambda: (x * 2).sum() + x[:, :2].gather(1, torch.zeros(4, 1, 3, dtype=torch.long))) == []
    assert len(count_host_syncs(lambda: x.sum().item())) == 1
    assert len(count_host_syncs(lambda: x[mask])) == 1
    assert len(count_host_syncs(lambda: x * torch.tensor([0.5, 2.0, 1.0]))) == 1  # host values copied in


def test_modality_statistics_are_not_copied_from_the_host():
    from mmssl.modalities import get_modality

    video = get_modality("video")
    x = torch.rand(1, 3, 2, 4, 4)
    assert count_host_syncs(lambda: video.denormalize(video.normalize(x))) == []
    torch.testing.assert_close(video.denormalize(video.normalize(x)), x)
    mean = torch.tensor(video.mean).reshape(1, 3, 1, 1, 1)
    std = torch.tensor(video.std).reshape(1, 3, 1, 1, 1)
    assert torch.equal(video.normalize(x), (x - mean) / std)  # the same float32 constants as before


@pytest.mark.parametrize("key", TINY)
def test_our_step_reads_nothing_on_the_host_and_the_baseline_does(key):
    spec, ours, ref = sides(key)
    batch = make_batches(spec, 2, 1, CPU)[0]
    assert count_host_syncs(lambda: ours.forward_backward(batch)) == []
    found = count_host_syncs(lambda: ref.forward_backward(batch))
    assert any("_local_scalar_dense" in f for f in found)  # loss.item()
    assert spec.video == any("index" in f for f in found)  # VideoMAE's x[~mask]


def test_make_batches_gives_both_sides_the_same_mask():
    spec = SPECS["videomae-tiny"]
    b = make_batches(spec, 2, 1, CPU)[0]
    tokens, (_, mask) = b.ours["video"], b.ref
    assert torch.equal(tokens.mask, mask) and tokens.visible.is_contiguous()
    spec = SPECS["mae-tiny"]
    b = make_batches(spec, 2, 1, CPU)[0]
    keep = torch.argsort(b.ref[1], dim=1)[:, :b.ours["image"].num_visible]  # MAE keeps the lowest noise
    assert torch.equal(keep.sort(1).values, b.ours["image"].visible)


def test_main_prints_the_figures_on_tiny_configs(capsys):
    results = main(["--tiny", "--device", "cpu", "--no-compile", "--steps", "1", "--warmup", "1", "--rounds", "1",
                    "--checkpointing"])
    out = capsys.readouterr().out
    for text in ("samples/s", "ms/step", "TFLOP/s", "host syncs/step", "ratio ours/baseline", "loss check"):
        assert text in out
    assert [r["spec"].method for r in results] == ["mae", "videomae"]
    for r in results:
        assert r["passed"] and r["syncs"]["ours"] == 0 and r["syncs"]["baseline"] >= 1
        assert r["checkpointed"] == 3  # 2 encoder blocks + 1 decoder block
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("key", TINY)
def test_our_method_compiles_to_one_graph(key):
    spec = SPECS[key]
    explained = torch._dynamo.explain(build_ours(spec))(make_batches(spec, 2, 1, CPU)[0].ours)
    assert explained.graph_count == 1 and explained.graph_break_count == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("key", TINY)
def test_cuda_step_has_no_host_syncs_and_losses_agree_in_bf16_and_fp16(key):
    cuda = torch.device("cuda")
    spec = SPECS[key]
    method = build_ours(spec).to(cuda)
    ours = OursStep(method, device=cuda, amp=torch.bfloat16, compile=False)
    ref = ReferenceStep(build_reference(spec, method), spec, device=cuda, amp=torch.float16)
    batches = make_batches(spec, 4, 2, cuda)
    assert passed(check_losses(spec, ours, ref, batches[0]))
    ours(batches[0])  # first step: the optimiser state is made
    assert cuda_syncs(lambda: ours(batches[1])) == 0
    assert cuda_syncs(lambda: ref(batches[1])) >= 1
