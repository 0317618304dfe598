"""Training-step throughput: mmssl's MAE ViT-B/16 and VideoMAE ViT-B against the reference code's step, one run.

Ours: bf16 autocast (fp32 weights), SDPA (flash) attention in every block, fused AdamW (`build_adamw`),
`torch.compile` of the whole method (encoder + decoder + loss; `--no-compile` turns it off), visible tokens picked
by contiguous gathers from indices the data pipeline drew, no host syncs inside the step, optional activation
checkpointing (`--checkpointing`). The baseline (`benchmarks/reference_models.py`) has the reference code's
structure: timm blocks with the explicit softmax attention of the timm the references pin (`--baseline-sdpa`
gives it SDPA), eager, fp32 weights, the reference's fp16 autocast + GradScaler (`--baseline-precision fp32` for
fp32 math), plain `torch.optim.AdamW` (not fused), and the reference engines' per-step work: `loss.item()` and a
finiteness check, unscale + grad norm, `torch.cuda.synchronize()`.

Before timing, ours' weights are copied into the baseline and the two losses are compared on one batch: in fp32
(equal to rounding, gradients too) and in each side's training precision against fp32 (bf16/fp16 tolerance).
Printed per model: samples/s, ms/step, peak memory above the resident weights, achieved TFLOP/s (model matmul
FLOPs of forward + backward, counted by `step_flops`), host syncs in one step, and the ratio ours / baseline.

Run: `python benchmarks/train_step.py --model both` (GPU); `--tiny --device cpu` runs a tiny config in seconds.
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
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmssl.train.syncs import count_host_syncs, cuda_syncs  # noqa: E402
from benchmarks.steps import (SPECS, Batch, OursStep, ReferenceStep, Spec, build_ours, build_reference,  # noqa: E402
                              make_batches, step_flops, sync)

__all__ = ["count_host_syncs", "cuda_syncs", "check_losses", "passed", "time_steps", "run_model", "main"]

def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def check_losses(spec: Spec, ours: OursStep, ref: ReferenceStep, batch: Batch) -> dict[str, float]:
    """Loss (and gradient) agreement on one batch before any step: fp32 vs fp32, and each training precision vs
    fp32. TF32 is switched off for the fp32 pass so that it is true fp32 on the GPU too."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast(ours.device.type, enabled=False):
            lo = ours.method(batch.ours).loss
            lr_ = ref.model(*batch.ref) if not spec.video else torch.nn.functional.mse_loss(
                ref.model(*batch.ref), ref.model.labels(*batch.ref, ref.mean, ref.std))
        lo.backward()
        lr_.backward()
        g_ours = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in ours.method.parameters() if p.grad is not None))
        g_ref = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in ref.model.parameters() if p.grad is not None))
        ours.opt.zero_grad(set_to_none=True)
        ref.opt.zero_grad(set_to_none=True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    fp32_ours, fp32_ref = float(lo.detach()), float(lr_.detach())
    # with gradients on: ours' compiled training graph is the one the timing reuses (no extra compile)
    amp_ours = float(ours.loss(batch).detach())
    with torch.no_grad():
        amp_ref = float(ref.loss(batch))
    return {"fp32 ours": fp32_ours, "fp32 baseline": fp32_ref, "fp32 rel diff": _rel(fp32_ours, fp32_ref),
            "grad norm rel diff": _rel(float(g_ours), float(g_ref)), "ours amp": amp_ours, "baseline amp": amp_ref,
            "ours amp vs fp32": _rel(amp_ours, fp32_ours), "baseline amp vs fp32": _rel(amp_ref, fp32_ref),
            "ours amp vs baseline fp32": _rel(amp_ours, fp32_ref)}


@dataclass
class Timing:
    """One timed round: ms per step, samples per second, peak GiB above resident (NaN on a CPU), last loss."""

    ms: float
    per_s: float
    peak_gib: float
    loss: float


def time_steps(step: Callable[[Batch], Tensor], batches: list[Batch], *, steps: int, warmup: int,
               device: torch.device) -> Timing:
    """Wall time of `steps` steps after `warmup` (the device drained before and after); peak memory is what the
    steps allocate above what was resident when they began (weights, optimiser state, inputs)."""
    loss = None
    for i in range(warmup):
        loss = step(batches[i % len(batches)])
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    for i in range(steps):
        loss = step(batches[i % len(batches)])
    sync(device)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) - resident) / 2**30 if device.type == "cuda" else math.nan
    return Timing(1e3 * seconds / steps, batches[0].size * steps / seconds, peak, float(loss))


def host_syncs(step: OursStep | ReferenceStep, batch: Batch, device: torch.device) -> int:
    """Host syncs of one step: the whole step by CUDA's sync debug mode on a GPU; elsewhere the ops before the
    optimiser update (a CPU optimiser reads its step counters on the host, which costs nothing there)."""
    if device.type == "cuda":
        return cuda_syncs(lambda: step(batch))
    found = count_host_syncs(lambda: step.forward_backward(batch))
    step.opt.zero_grad(set_to_none=True)
    return len(found)


TOL_FP32, TOL_GRAD, TOL_AMP = 1e-4, 1e-3, 2e-2


def passed(check: dict[str, float]) -> bool:
    """fp32 losses and gradient norms equal to rounding; each training precision within bf16/fp16 tolerance."""
    return (check["fp32 rel diff"] < TOL_FP32 and check["grad norm rel diff"] < TOL_GRAD
            and max(check["ours amp vs fp32"], check["baseline amp vs fp32"],
                    check["ours amp vs baseline fp32"]) < TOL_AMP)


def run_model(spec: Spec, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Builds both sides on `device`, checks their losses, times them in alternating rounds; prints and returns."""
    from mmssl.train.checkpointing import checkpoint_blocks

    cuda = device.type == "cuda"
    batch = args.batch or spec.batch
    amp = torch.bfloat16 if cuda and args.precision == "bf16" else None
    ref_amp = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[args.baseline_precision] if cuda else None
    method = build_ours(spec).to(device)
    ref_model = build_reference(spec, method, sdpa=args.baseline_sdpa)
    wrapped = checkpoint_blocks(method) if args.checkpointing else 0
    ours = OursStep(method, device=device, amp=amp, compile=args.compile)
    ref = ReferenceStep(ref_model, spec, device=device, amp=ref_amp)
    batches = make_batches(spec, batch, 2, device, seed=args.seed)
    flops = step_flops(spec, method, batch)
    name = f"{spec.method} {spec.encoder}{'' if spec.depth is None else f' depth {spec.depth}'}"
    print(f"\n== {name}: mask {spec.mask_ratio}, decoder {spec.decoder_dim}x{spec.decoder_depth}, batch {batch}, "
          f"{flops / batch / 1e9:.3g} GFLOP per sample and step", flush=True)

    check = check_losses(spec, ours, ref, batches[0])
    ok = passed(check)
    print(f"  loss check: fp32 ours {check['fp32 ours']:.6f} baseline {check['fp32 baseline']:.6f} "
          f"(rel {check['fp32 rel diff']:.1e}), grad norm rel {check['grad norm rel diff']:.1e}; "
          f"ours {_precision(amp)} {check['ours amp']:.6f} (rel to fp32 {check['ours amp vs fp32']:.1e}, to baseline "
          f"fp32 {check['ours amp vs baseline fp32']:.1e}); baseline {_precision(ref_amp)} {check['baseline amp']:.6f} "
          f"(rel {check['baseline amp vs fp32']:.1e}) -> {'PASS' if ok else 'FAIL'}", flush=True)

    sides = {"baseline": ref, "ours": ours}
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
              "ours": f"ours (SDPA, {_precision(amp)}, fused AdamW: {_fused(ours.opt)}, "
                      f"{'compiled' if args.compile else 'eager'}"
                      f"{f', {wrapped} blocks checkpointed' if wrapped else ''})"}
    for side in sides:
        t = best[side]
        spread = max(x.per_s for x in rounds[side]) / min(x.per_s for x in rounds[side]) - 1
        peak = "n/a" if math.isnan(t.peak_gib) else f"{t.peak_gib:.2f} GiB"
        print(f"  {labels[side]}:\n    {t.per_s:9.1f} samples/s  {t.ms:8.2f} ms/step  peak {peak} above resident  "
              f"{flops / t.ms / 1e9:.3g} TFLOP/s  {syncs[side]} host syncs/step  "
              f"(rounds spread {100 * spread:.1f}%, final loss {t.loss:.4f})", flush=True)
    ratio = best["ours"].per_s / best["baseline"].per_s
    print(f"  ratio ours/baseline: {ratio:.2f} (target >= 1.3)", flush=True)
    return {"spec": spec, "batch": batch, "check": check, "passed": ok, "timing": best, "syncs": syncs,
            "ratio": ratio, "flops": flops, "checkpointed": wrapped}


def _precision(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast", None: "fp32"}[dtype]


def _fused(opt: torch.optim.Optimizer) -> bool:
    return bool(opt.defaults.get("fused"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["mae", "videomae", "both"], default="both")
    parser.add_argument("--batch", type=int, default=None, help="per model default: MAE 256, VideoMAE 32")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating baseline/ours timing rounds (best kept)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help="tiny configs: runs on a CPU in seconds")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="ours runs eager")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing of ours' blocks")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="ours' autocast (GPU only)")
    parser.add_argument("--baseline-precision", choices=["fp16", "bf16", "fp32"], default="fp16",
                        help="the baseline's autocast (GPU only); fp16 + GradScaler is the references' choice")
    parser.add_argument("--baseline-sdpa", action="store_true", help="give the baseline timm's SDPA attention")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark; returns one result dict per model (for tests)."""
    args = parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    what = f"{torch.cuda.get_device_name(device)}" if device.type == "cuda" else "CPU"
    print(f"device {device} ({what}), torch {torch.__version__}, compile {args.compile}", flush=True)
    names = ["mae", "videomae"] if args.model == "both" else [args.model]
    results = []
    for n in names:
        spec = SPECS[f"{n}-tiny" if args.tiny else n]
        try:
            results.append(run_model(spec, args, device))
        except Exception as err:  # noqa: BLE001 - one model failing (out of memory) must not hide the other
            traceback.print_exc()
            results.append({"spec": spec, "failed": f"{type(err).__name__}: {err}", "passed": False})
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print("\nmodel      batch  baseline/s    ours/s  ratio  ours TFLOP/s  loss check")
    for r in results:
        if "failed" in r:
            print(f"{r['spec'].method:<10} FAILED: {r['failed']}")
            continue
        t = r["timing"]
        print(f"{r['spec'].method:<10} {r['batch']:5d} {t['baseline'].per_s:11.1f} {t['ours'].per_s:9.1f} "
              f"{r['ratio']:6.2f} {r['flops'] / t['ours'].ms / 1e9:13.3g}  {'PASS' if r['passed'] else 'FAIL'}")
    return results


if __name__ == "__main__":
    results = main()
    sys.exit(0 if all(r["passed"] for r in results) else 1)
