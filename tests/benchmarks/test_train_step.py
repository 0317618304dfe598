"""benchmarks/train_step.py on the CPU: ours is the recipe's run and step (and nothing of it is written in
benchmarks/), the baseline computes ours' function on ours' masks, the printed figures, the FLOP count, the
host-sync counter; and, where CUDA is present, the GPU-only checks (sync debug mode, bf16 vs fp16 losses)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import steps
from benchmarks.reference_models import use_sdpa
from benchmarks.steps import (ReferenceStep, build_reference, make_batches, ours_run, recipe_step,
                              step_flops)
from benchmarks.train_step import check_losses, main, passed
from mmssl.train.step import TrainStep, method_inputs
from mmssl.tokens import patchify
from mmssl.train.syncs import count_host_syncs, cuda_syncs
from pipelines.draws import PREFIX, draw_batch

CPU = torch.device("cpu")
MODELS = ["mae", "videomae"]
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
CPU_RUN = ["train.device=cpu", "train.threads=1"]
CONSTANT_LR = ["optim.lr=1e-3", "optim.min_lr=1e-3", "optim.warmup_epochs=0", "optim.weight_decay=0.0"]


def sides(model: str, *, batch: int = 4, count: int = 1, overrides=(), device: str = "cpu", amp=None, seed=0):
    run = ours_run(model, tiny=True, batch=batch, overrides=[f"train.device={device}", "train.threads=1", *overrides])
    batches = make_batches(run, batch, count, seed=seed)
    ref = ReferenceStep(build_reference(run, batches[0]), run.method.modality, device=run.device, amp=amp,
                        lr=run.step.optimizer.defaults["lr"], betas=run.optim.betas,
                        weight_decay=run.optim.weight_decay)
    return run, ref, batches


@pytest.mark.parametrize("model", MODELS)
def test_baseline_with_copied_weights_computes_our_loss_and_gradients(model):
    run, ref, batches = sides(model)
    check = check_losses(run, ref, batches[0])
    # the same function on the same masks and weights in float32: a mean loss ~1 is good to ~1e-7 relative and
    # the gradient norm to ~1e-6 (measured 0 and 1e-8 for both models); 1e-5 is 10x the latter
    assert check["fp32 rel diff"] < 1e-5 and check["grad norm rel diff"] < 1e-5
    # a real reconstruction loss, not a degenerate zero: normalised-pixel MSE of an untrained model is ~1 (1.15, 1.08)
    assert 0.5 < check["fp32 ours"] < 5
    assert passed(check)


@pytest.mark.parametrize("model", MODELS)
def test_loss_check_fails_when_the_baseline_computes_something_else(model):
    run, ref, batches = sides(model)
    conv = ref.model.encoder.patch_embed.proj if ref.video else ref.model.patch_embed.proj
    with torch.no_grad():  # ours' channel-last patch vectors read as channel-first: the mapping the copy must do
        conv.weight.copy_(run.method.encoder.patch_embed.proj.weight.reshape(conv.weight.shape))
    assert not passed(check_losses(run, ref, batches[0]))


@pytest.mark.parametrize("model", MODELS)
def test_both_sides_train_alike(model):
    """Two optimiser steps each (the recipe's step, fp32, a constant large lr, no weight decay) leave both models
    with the same loss, and a different one from the untrained model's."""
    run, ref, batches = sides(model, count=3, overrides=CONSTANT_LR, seed=1)
    ours = recipe_step(run)
    for b in batches[:2]:
        ours(b.ours)
        ref(b)
    untrained = ours_run(model, tiny=True, batch=4, overrides=CPU_RUN + CONSTANT_LR)  # same seed: same init
    with torch.no_grad():
        lo, lr_ = float(run.method(method_inputs(batches[2].ours)).loss), float(ref.loss(batches[2]))
        before = float(untrained.method(method_inputs(batches[2].ours)).loss)
    # after two fp32 AdamW steps at lr 1e-3 both sides agree to rounding (measured 0.0); AdamW's division by sqrt(v)
    # can turn 1e-7 gradient differences into ~lr-sized ones on near-zero gradients, hence 1e-4 rather than 1e-6
    assert abs(lo - lr_) / lr_ < 1e-4
    # the steps changed the model: the comparison is not of untouched ones (measured 0.061 and 0.027: 27x over)
    assert abs(lo - before) / before > 1e-3
    assert run.step.drain()["skipped"] == 0


@pytest.mark.parametrize("model", MODELS)
def test_step_flops_equal_the_flop_counter(model):
    run = ours_run(model, tiny=True, batch=3, overrides=CPU_RUN)
    batch = make_batches(run, 3 if model == "mae" else 4, 1)[0]
    use_sdpa(run.method, False)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:  # attention as counted matmuls
        run.method(method_inputs(batch.ours)).loss.backward()
    assert counter.get_total_flops() == pytest.approx(step_flops(run, batch), rel=1e-9)  # integer counts: exact


def test_full_size_flops_are_vit_b_sized():
    """MAE ViT-B/16 at mask .75 from the shipped config: the encoder sees 49 tokens + [CLS], the 8-block decoder
    197; about 3 x 17 GFLOP per image."""
    run = ours_run("mae", batch=256, overrides=CPU_RUN)
    batch = make_batches(run, 1, 1)[0]
    assert batch.tokens.grid == (14, 14) and batch.tokens.num_visible == 49
    assert 45e9 < step_flops(run, batch) < 60e9  # an exact count (58.1e9), checked as ViT-B-sized, not to the FLOP


def test_host_sync_counter_sees_item_and_boolean_indexing_only():
    x, mask = torch.randn(4, 5, 3), torch.rand(4, 5) > 0.5
    assert count_host_syncs(lambda: (x * 2).sum() + x[:, :2].gather(1, torch.zeros(4, 1, 3, dtype=torch.long))) == []
    assert len(count_host_syncs(lambda: x.sum().item())) == 1
    assert len(count_host_syncs(lambda: x[mask])) == 1
    assert len(count_host_syncs(lambda: x * torch.tensor([0.5, 2.0, 1.0]))) == 1  # host values copied in


@pytest.mark.parametrize("model", MODELS)
def test_the_recipes_step_reads_nothing_on_the_host_and_the_baseline_does(model):
    run, ref, batches = sides(model, count=2)
    ours = recipe_step(run)
    ours(batches[0].ours)  # the first step makes the optimiser state
    assert count_host_syncs(lambda: ours(batches[1].ours)) == []
    found = count_host_syncs(lambda: ref(batches[1]))
    assert any("_local_scalar_dense" in f for f in found)  # loss.item()
    assert (model == "videomae") == any("index" in f for f in found)  # VideoMAE's x[~mask]


@pytest.mark.parametrize("model", MODELS)
def test_batches_are_the_device_stages_with_the_pipelines_masks_and_the_baseline_gets_the_same(model):
    run = ours_run(model, tiny=True, batch=4, overrides=CPU_RUN)
    batch = make_batches(run, 4, 1)[0]
    tokens, (dense, ref_mask) = batch.tokens, batch.ref
    assert tokens.visible is not None and tokens.num_visible == run.method.masking.visible_count(tokens.grid)
    # the masks the planner draws in the workers for these samples (keyed by seed, epoch and key)
    collated = steps._collated(run, 4, torch.Generator().manual_seed(0), 0)
    drawn = draw_batch(run.device_stage, collated)[f"{PREFIX}{run.device_stage.views[0].view}.visible"]
    assert torch.equal(drawn.flatten(0, 1), tokens.visible)  # (B, rows, K) -> (B * rows, K)
    assert torch.equal(patchify(dense, tokens.patch)[0], tokens.patches)  # the same pixels
    if model == "videomae":
        assert torch.equal(ref_mask, tokens.mask)
    else:  # MAE keeps the lowest noise: exactly ours' visible tokens, in grid order
        assert torch.equal(torch.argsort(ref_mask, dim=1)[:, :tokens.num_visible], tokens.visible)


def test_the_timed_step_is_the_recipes_train_step(monkeypatch):
    """Every step train_step.py times of ours goes through the TrainStep of a run `build_run` made."""
    built, calls = [], []
    build_run, call = steps.build_run, TrainStep.__call__

    def recording_build_run(*args, **kwargs):
        built.append(build_run(*args, **kwargs))
        return built[-1]

    def counted(self, *args, **kwargs):
        calls.append(self)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(steps, "build_run", recording_build_run)
    monkeypatch.setattr(TrainStep, "__call__", counted)
    main(["--tiny", "--device", "cpu", "--model", "mae", "--steps", "2", "--warmup", "1", "--rounds", "2"])
    assert len(built) == 1 and built[0].cfg["_name"] == "mae_vit_base-tiny"
    # round 1: 1 warm-up + 2 timed; round 2: 1 + 2; one more for the host-sync count
    assert len(calls) == 7 and all(s is built[0].step for s in calls)


def _calls(tree: ast.AST) -> list[tuple[str, str]]:
    """(qualified name of the enclosing function or class, called name) of every call in a module."""
    found: list[tuple[str, str]] = []

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, f"{scope}.{child.name}".lstrip("."))
                continue
            if isinstance(child, ast.Call):
                found.append((scope, ast.unparse(child.func)))
            visit(child, scope)

    visit(tree, "")
    return found


def test_no_model_or_step_of_ours_is_written_in_benchmarks():
    """benchmarks/ defines only the baseline's model and step classes; it never compiles, builds an optimiser or
    runs a backward pass outside the baseline's step and the loss check (ours comes from `build_run`)."""
    classes, calls = {}, []
    for path in sorted(BENCHMARKS.glob("*.py")):
        tree = ast.parse(path.read_text())
        classes.update({n.name: [ast.unparse(b) for b in n.bases]
                        for n in ast.walk(tree) if isinstance(n, ast.ClassDef)})
        calls += _calls(tree)
    assert {name for name, bases in classes.items() if any("Module" in b for b in bases)} == {
        "ReferenceMAE", "ReferenceVideoMAE"}
    assert {name for name in classes if "Step" in name} == {"ReferenceStep"}
    assert not [c for c in calls if c[1] == "torch.compile"]
    assert {scope for scope, name in calls if name.startswith("torch.optim.")} == {"ReferenceStep.__init__"}
    assert {scope for scope, name in calls if name.endswith(".backward")} == {"ReferenceStep.__call__",
                                                                             "check_losses"}


def test_main_prints_the_figures_on_tiny_configs(capsys):
    results = main(["--tiny", "--device", "cpu", "--steps", "1", "--warmup", "1", "--rounds", "1", "--checkpointing"])
    out = capsys.readouterr().out
    for text in ("samples/s", "ms/step", "TFLOP/s", "host syncs/step", "ratio ours/baseline", "loss check",
                 "the recipe's TrainStep"):
        assert text in out
    assert [r["model"] for r in results] == MODELS
    for r in results:
        assert r["passed"] and r["syncs"]["ours"] == 0 and r["syncs"]["baseline"] >= 1
        assert r["checkpointed"] == 3  # 2 encoder blocks + 1 decoder block
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0 and not r["compiled"]  # auto: eager on a CPU


@pytest.mark.parametrize("model", MODELS)
def test_the_compiled_recipe_step_compiles_once(model, monkeypatch):
    """The step's first call runs eager and fills the position caches, which filled inside a compiled graph would
    make the next step recompile (dynamo with its eager backend here, to keep it fast; the guards are the same
    with inductor)."""
    import torch._dynamo.utils as dynamo_utils

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile_(model, backend="eager", **kw))
    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    run = ours_run(model, tiny=True, batch=4, overrides=CPU_RUN + ["train.compile=true"])
    batches = make_batches(run, 4, 3)
    step = recipe_step(run)
    for b in batches:
        step(b.ours)
    assert run.step.compiled and dynamo_utils.counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model", MODELS)
def test_cuda_step_has_no_host_syncs_and_losses_agree_in_bf16_and_fp16(model):
    run, ref, batches = sides(model, count=2, device="cuda", amp=torch.float16, overrides=["train.compile=false"])
    assert run.step.precision == torch.bfloat16  # the recipe's default on CUDA
    assert passed(check_losses(run, ref, batches[0]))
    ours = recipe_step(run)
    ours(batches[0].ours)  # first step: the optimiser state is made
    assert cuda_syncs(lambda: ours(batches[1].ours)) == 0
    assert cuda_syncs(lambda: ref(batches[1])) >= 1
