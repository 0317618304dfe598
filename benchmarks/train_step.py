"""Training-step throughput: the recipe's MAE ViT-B/16 and VideoMAE ViT-B step against the reference code's step.

Ours is what `mmssl image|video pretrain --config mae_vit_base|videomae_vit_base` runs: `build_run` of the shipped
config and its `TrainStep` (fused AdamW with on-device skipping of non-finite steps, the lr schedule, the config's
precision: bf16 autocast on CUDA, `torch.compile` on CUDA; `--no-compile` sets `train.compile=false`), fed
synthetic collated batches put through the run's own device stage (its crops, flips and masks) before timing;
`--checkpointing` wraps the method's blocks (`mmssl.train.recompute.checkpoint_blocks`). The baseline
(`benchmarks/steps.py`, `benchmarks/reference_models.py`) has the reference code's structure: timm blocks with the
explicit softmax attention of the timm the references pin (`--baseline-sdpa` gives it SDPA), eager, fp32 weights,
fp16 autocast + GradScaler (`--baseline-precision fp32` for fp32 math), plain `torch.optim.AdamW`, and the
reference engines' per-step work: `loss.item()` and a finiteness check, unscale + grad norm, a device sync.

Before timing, ours' weights are copied into the baseline, which gets ours' masks, and the two losses are compared
on one batch: in fp32 (equal to rounding, gradients too) and in each side's training precision against fp32.
Printed per model: samples/s, ms/step, peak memory above the resident weights, achieved TFLOP/s (model matmul
FLOPs of forward + backward, `step_flops`), host syncs in one step, and the ratio ours / baseline.

Run: `python benchmarks/train_step.py --model both` (GPU); `--tiny --device cpu` runs the tiny configs in seconds.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.steps import (Batch, ReferenceStep, build_reference, default_batch,  # noqa: E402
                              make_batches, ours_run, recipe_step, step_flops, sync)
from mmssl.train.step import method_inputs  # noqa: E402
from mmssl.train.syncs import count_host_syncs, cuda_syncs  # noqa: E402
from recipes.pretrain import Run  # noqa: E402

__all__ = ["check_losses", "passed", "time_steps", "run_model", "parse_args", "main"]


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def _grad_norm(model: torch.nn.Module) -> float:
    return float(torch.sqrt(sum(p.grad.double().pow(2).sum() for p in model.parameters() if p.grad is not None)))


def check_losses(run: Run, ref: ReferenceStep, batch: Batch) -> dict[str, float]:
    """Loss (and gradient) agreement on one batch before any step: fp32 vs fp32, and each training precision vs
    fp32. TF32 is switched off for the fp32 pass so that it is true fp32 on the GPU too."""
    device, inputs = run.device, method_inputs(batch.ours)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast(device.type, enabled=False):
            lo, lr_ = run.method(inputs).loss, ref.fp32_loss(batch)
        lo.backward()
        lr_.backward()
        g_ours, g_ref = _grad_norm(run.method), _grad_norm(ref.model)
        run.step.optimizer.zero_grad(set_to_none=True)
        ref.opt.zero_grad(set_to_none=True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    fp32_ours, fp32_ref = float(lo.detach()), float(lr_.detach())
    # the step's own forward (compiled when the step is) under its own autocast, gradients on: the graph the
    # timed steps reuse, so the check costs no extra compilation
    precision = run.step.precision
    with torch.autocast(device.type, dtype=precision or torch.float32, enabled=precision is not None):
        amp_ours = float(run.step.forward(inputs).loss.detach())
    with torch.no_grad():
        amp_ref = float(ref.loss(batch))
    return {"fp32 ours": fp32_ours, "fp32 baseline": fp32_ref, "fp32 rel diff": _rel(fp32_ours, fp32_ref),
            "grad norm rel diff": _rel(g_ours, g_ref), "ours amp": amp_ours, "baseline amp": amp_ref,
            "ours amp vs fp32": _rel(amp_ours, fp32_ours), "baseline amp vs fp32": _rel(amp_ref, fp32_ref),
            "ours amp vs baseline fp32": _rel(amp_ours, fp32_ref)}


TOL_FP32, TOL_GRAD, TOL_AMP = 1e-4, 1e-3, 2e-2


def passed(check: dict[str, float]) -> bool:
    """fp32 losses and gradient norms equal to rounding; each training precision within bf16/fp16 tolerance."""
    return (check["fp32 rel diff"] < TOL_FP32 and check["grad norm rel diff"] < TOL_GRAD
            and max(check["ours amp vs fp32"], check["baseline amp vs fp32"],
                    check["ours amp vs baseline fp32"]) < TOL_AMP)


@dataclass
class Timing:
    """One timed round: ms per step, samples per second, peak GiB above resident (NaN on a CPU), last loss."""

    ms: float
    per_s: float
    peak_gib: float
    loss: float


def _loss(out: Any) -> float:
    return float(out.loss if hasattr(out, "loss") else out)


def time_steps(step: Callable[[Batch], Any], batches: list[Batch], *, steps: int, warmup: int,
               device: torch.device) -> Timing:
    """Wall time of `steps` steps after `warmup` (the device drained before and after); peak memory is what the
    steps allocate above what was resident when they began (weights, optimiser state, inputs)."""
    out = None
    for i in range(warmup):
        out = step(batches[i % len(batches)])
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    for i in range(steps):
        out = step(batches[i % len(batches)])
    sync(device)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) - resident) / 2**30 if device.type == "cuda" else math.nan
    return Timing(1e3 * seconds / steps, batches[0].size * steps / seconds, peak, _loss(out))


def host_syncs(step: Callable[[Batch], Any], batch: Batch, device: torch.device) -> int:
    """Host syncs of one whole step: CUDA's sync debug mode on a GPU, the dispatcher counter elsewhere."""
    if device.type == "cuda":
        return cuda_syncs(lambda: step(batch))
    return len(count_host_syncs(lambda: step(batch)))


def _overrides(args: argparse.Namespace) -> list[str]:
    """The command line as the recipe's `key=value` overrides."""
    out = [f"train.device={args.device}", f"train.seed={args.seed}"]
    if args.device == "cpu":  # a logic check there: one thread does not fight whatever else the machine runs
        out.append("train.threads=1")
    if not args.compile:
        out.append("train.compile=false")
    if args.precision != "auto":
        out.append(f"train.precision={args.precision}")
    return out


def run_model(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """Builds both sides, checks their losses, times them in alternating rounds; prints and returns."""
    from mmssl.train.recompute import checkpoint_blocks

    batch = args.batch or default_batch(model, args.tiny)
    run = ours_run(model, tiny=args.tiny, batch=batch, overrides=_overrides(args))  # lr scaled to the batch
    device = run.device
    wrapped = checkpoint_blocks(run.method) if args.checkpointing else 0  # before the first (compiling) call
    batches = make_batches(run, batch, 2, seed=args.seed)
    cuda = device.type == "cuda"
    ref_amp = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[args.baseline_precision] if cuda else None
    ref = ReferenceStep(build_reference(run, batches[0], sdpa=args.baseline_sdpa), run.method.modality,
                        device=device, amp=ref_amp, lr=run.step.optimizer.defaults["lr"],
                        betas=run.optim.betas, weight_decay=run.optim.weight_decay)
    recipe = recipe_step(run)
    ours = lambda b: recipe(b.ours)  # noqa: E731 - the recipe's step on ours' form of the batch
    flops = step_flops(run, batches[0])
    enc, tokens = run.method.encoder, batches[0].tokens
    print(f"\n== {model} ({run.cfg.get('_name')}): encoder {enc.dim}x{enc.depth}, grid {tokens.grid}, "
          f"{tokens.num_visible} of {tokens.num_tokens} tokens visible, batch {batch}, "
          f"{flops / batch / 1e9:.3g} GFLOP per sample and step", flush=True)

    check = check_losses(run, ref, batches[0])
    ok = passed(check)
    amp = run.step.precision
    print(f"  loss check: fp32 ours {check['fp32 ours']:.6f} baseline {check['fp32 baseline']:.6f} "
          f"(rel {check['fp32 rel diff']:.1e}), grad norm rel {check['grad norm rel diff']:.1e}; "
          f"ours {_precision(amp)} {check['ours amp']:.6f} (rel to fp32 {check['ours amp vs fp32']:.1e}, to baseline "
          f"fp32 {check['ours amp vs baseline fp32']:.1e}); baseline {_precision(ref_amp)} {check['baseline amp']:.6f} "
          f"(rel {check['baseline amp vs fp32']:.1e}) -> {'PASS' if ok else 'FAIL'}", flush=True)

    sides: dict[str, Callable[[Batch], Any]] = {"baseline": ref, "ours": ours}
    rounds: dict[str, list[Timing]] = {"baseline": [], "ours": []}
    for r in range(args.rounds):
        for side, step in sides.items():  # alternating, so clock or thermal drift hits both sides alike
            rounds[side].append(time_steps(step, batches, steps=args.steps, warmup=args.warmup if r == 0 else 1,
                                           device=device))
    syncs = {side: host_syncs(step, batches[0], device) for side, step in sides.items()}
    best = {side: max(ts, key=lambda t: t.per_s) for side, ts in rounds.items()}
    labels = {"baseline": f"baseline (timm {'SDPA' if args.baseline_sdpa else 'explicit'} attention, "
                          f"{_precision(ref_amp)}{' + GradScaler' if ref.scaler.is_enabled() else ''}, AdamW "
                          f"not fused, eager)",
              "ours": f"ours (the recipe's TrainStep: {_precision(amp)}, fused AdamW: "
                      f"{bool(run.step.optimizer.defaults.get('fused'))}, "
                      f"{'compiled' if run.step.compiled else 'eager'}"
                      f"{f', {wrapped} blocks checkpointed' if wrapped else ''})"}
    for side in sides:
        t = best[side]
        spread = max(x.per_s for x in rounds[side]) / min(x.per_s for x in rounds[side]) - 1
        peak = "n/a" if math.isnan(t.peak_gib) else f"{t.peak_gib:.2f} GiB"
        print(f"  {labels[side]}:\n    {t.per_s:9.1f} samples/s  {t.ms:8.2f} ms/step  peak {peak} above resident  "
              f"{flops / t.ms / 1e9:.3g} TFLOP/s  {syncs[side]} host syncs/step  "
              f"(rounds spread {100 * spread:.1f}%, final loss {t.loss:.4f})", flush=True)
    counts = run.step.drain()
    ratio = best["ours"].per_s / best["baseline"].per_s
    print(f"  ratio ours/baseline: {ratio:.2f} (target >= 1.3); ours skipped {counts['skipped']} non-finite steps",
          flush=True)
    return {"model": model, "batch": batch, "check": check, "passed": ok and counts["skipped"] == 0,
            "timing": best, "syncs": syncs, "ratio": ratio, "flops": flops, "checkpointed": wrapped,
            "compiled": run.step.compiled}


def _precision(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast", None: "fp32"}[dtype]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["mae", "videomae", "both"], default="both")
    parser.add_argument("--batch", type=int, default=None, help="samples per step (default: MAE 256, VideoMAE 32)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating baseline/ours timing rounds (best kept)")
    parser.add_argument("--device", default="auto", help="train.device of the run: auto, cuda or cpu")
    parser.add_argument("--tiny", action="store_true", help="the configs' tiny overrides: runs on a CPU in seconds")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="train.compile=false (eager)")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing of ours' blocks")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="train.precision of ours (auto: bf16 autocast on CUDA, fp32 on a CPU)")
    parser.add_argument("--baseline-precision", choices=["fp16", "bf16", "fp32"], default="fp16",
                        help="the baseline's autocast (GPU only); fp16 + GradScaler is the references' choice")
    parser.add_argument("--baseline-sdpa", action="store_true", help="give the baseline timm's SDPA attention")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark; returns one result dict per model (for tests)."""
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    what = torch.cuda.get_device_name() if cuda else "CPU"
    compiled = "the recipe's default (compiled on CUDA)" if args.compile else "off (train.compile=false)"
    print(f"device {args.device} ({what}), torch {torch.__version__}, compile: {compiled}", flush=True)
    names = ["mae", "videomae"] if args.model == "both" else [args.model]
    results = []
    for name in names:
        try:
            results.append(run_model(name, args))
        except Exception as err:  # noqa: BLE001 - one model failing (out of memory) must not hide the other
            traceback.print_exc()
            results.append({"model": name, "failed": f"{type(err).__name__}: {err}", "passed": False})
        if cuda:  # the next model gets the memory this one's run held
            torch.cuda.empty_cache()
    print("\nmodel      batch  baseline/s    ours/s  ratio  ours TFLOP/s  loss check")
    for r in results:
        if "failed" in r:
            print(f"{r['model']:<10} FAILED: {r['failed']}")
            continue
        t = r["timing"]
        print(f"{r['model']:<10} {r['batch']:5d} {t['baseline'].per_s:11.1f} {t['ours'].per_s:9.1f} "
              f"{r['ratio']:6.2f} {r['flops'] / t['ours'].ms / 1e9:13.3g}  {'PASS' if r['passed'] else 'FAIL'}")
    return results


if __name__ == "__main__":
    results = main()
    sys.exit(0 if all(r["passed"] for r in results) else 1)
