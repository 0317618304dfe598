"""The two sides of `benchmarks/train_step.py` (ours also serves `benchmarks/pipeline_gpu.py`).

Ours is what `mmssl <modality> pretrain` runs: `recipes.pretrain.build_run` of a shipped config (MAE
`image/mae_vit_base`, VideoMAE `video/videomae_vit_base`, or their tiny override lists), timed through the run's
own `TrainStep` called as the recipe's loop calls it. Its inputs are synthetic collated batches in the form the
loader's workers hand over (uint8 pre-cut crops for MAE, decoded clips for VideoMAE, with keys and seeds), put
through the run's device stage once before timing, so patches, crops and masks are the pipeline's own.

Nothing of our side is written here. What is written here is the baseline: the reference engines' step
(MAE `engine_pretrain.py`, VideoMAE `engine_for_pretraining.py`: fp16 autocast + GradScaler, `loss.item()` and a
finiteness check, unscale and a grad norm, a plain AdamW, `torch.cuda.synchronize()`) around the reference-
structured models of `benchmarks/reference_models.py`, built with ours' sizes and weights and given ours' masks.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.reference_models import ReferenceMAE, ReferenceVideoMAE, load_from_ours  # noqa: E402
from mmssl.train.step import StepOutput, method_inputs  # noqa: E402
from recipes.pretrain import Run, build_run, load_run_config  # noqa: E402

__all__ = ["CONFIGS", "BATCH", "Batch", "run_config", "ours_run", "default_batch", "is_video", "clips_per_video",
           "make_batches", "recipe_step", "build_reference", "ReferenceStep", "step_flops", "sync"]

# the shipped configs benchmarked, and the per-GPU batch the figures are quoted at (the configs' own batch sizes
# are global batches of many GPUs)
CONFIGS = {"mae": ("image/mae_vit_base", "image"), "videomae": ("video/videomae_vit_base", "video")}
BATCH = {"mae": 256, "videomae": 32}
SCHEDULE_STEPS = 1000  # `train.steps` of a benchmark run: progress only sets the lr, not what a step costs


def is_video(run: Run) -> bool:
    """Whether the run trains on video clips (its device stage makes video Tokens)."""
    return getattr(run.device_stage, "mode", None) == "video"


def _clip_stage(cfg: dict) -> dict:
    """The config's first worker stage (VideoMAE's `decode_clips`: frames, stride, clips per decode)."""
    return (cfg["data"]["train"].get("stages") or [{}])[0]


def clips_per_video(run: Run) -> int:
    """Clips cut from one decoded video (repeated sampling) by the config's first worker stage; 1 for images."""
    return int(_clip_stage(run.cfg).get("clips", 1)) if is_video(run) else 1


def run_config(model: str, *, tiny: bool = False, overrides: Sequence[str] = ()) -> dict:
    """The shipped config of a benchmarked model ("mae" or "videomae"), its tiny override list first when `tiny`,
    then `overrides`; a fixed schedule length (progress only sets the lr, not what a step costs), no progress bar."""
    name, modality = CONFIGS[model]
    return load_run_config(name, modality, [f"train.steps={SCHEDULE_STEPS}", "train.progress=false",
                                            "train.tensorboard=false", *overrides], tiny=tiny)


def ours_run(model: str, *, tiny: bool = False, batch: int | None = None, overrides: Sequence[str] = (),
             data: bool = False) -> Run:
    """The recipe's run of a benchmarked model: `build_run` of `run_config(model, tiny, overrides)`.

    Args:
        model: "mae" or "videomae".
        tiny: apply the config's tiny override list first (a CPU-sized model of the same recipe).
        batch: samples per step without a loader (clips for video); sizes the learning rate as the recipe does.
        overrides: `key=value` overrides (device, precision, compile, data source...).
        data: also build the loader and the feed.
    """
    return build_run(run_config(model, tiny=tiny, overrides=overrides), data=data, batch_size=batch)


def default_batch(model: str, tiny: bool) -> int:
    """Samples per step: b256 / b32 for the paper-size models; the tiny config's loader batch (times the clips
    per video) for tiny ones."""
    if not tiny:
        return BATCH[model]
    cfg = run_config(model, tiny=True)
    clips = int(_clip_stage(cfg).get("clips", 1)) if CONFIGS[model][1] == "video" else 1
    return int(cfg["data"]["train"]["batch_size"]) * clips


@dataclass
class Batch:
    """One input in both forms: ours (the device stage's method batch) and the baseline's dense tensors."""

    ours: dict
    ref: tuple[Tensor, Tensor]  # MAE: (images, noise); VideoMAE: (clips, bool mask True = hidden)
    size: int

    @property
    def tokens(self):
        """Ours' Tokens of the model's modality."""
        return self.ours["video"] if "video" in self.ours else self.ours["image"]


def _collated(run: Run, batch: int, g: torch.Generator, start: int) -> dict[str, Any]:
    """A collated batch as the loader's workers make it for the shipped stages, with random uint8 pixels:
    pre-cut crops and the source size for MAE (`decode_images` + `crop_images`), 320x240 decoded clips for
    VideoMAE (`decode_clips`, `clips` per video)."""
    stage = run.device_stage
    if is_video(run):
        k = clips_per_video(run)
        frames = int(_clip_stage(run.cfg).get("num_frames", 16))
        rows = max(batch // k, 1)
        pixels = {"video": torch.randint(0, 256, (rows, k, frames, 240, 320, 3), generator=g, dtype=torch.uint8)}
    else:
        rows, view = batch, stage.views[0]
        pixels = {f"image.{view.view}": torch.randint(0, 256, (rows, 3, *view.size), generator=g, dtype=torch.uint8),
                  "image_size": torch.tensor([[375, 500]] * rows)}  # the crops' source: 500x375 JPEGs
    return {**pixels, "__key__": [f"synthetic{start + i:06d}" for i in range(rows)],
            "__seed__": torch.zeros(rows, dtype=torch.long), "__epoch__": torch.zeros(rows, dtype=torch.long),
            "__size__": rows}


def make_batches(run: Run, batch: int, count: int, *, seed: int = 0) -> list[Batch]:
    """`count` synthetic batches of `batch` samples through the run's device stage on its device (the stage
    draws each sample's crop, flip and mask as the workers would), with the baseline's inputs made from them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        made = run.device_stage(_collated(run, batch, g, i * batch), run.device)
        tokens = made["video"] if is_video(run) else made["image"]
        if tokens.visible is None:  # the step would draw masks itself: not what the recipe's feed gives it
            raise RuntimeError(f"{run.cfg.get('_name')}: the device stage made no mask; build_run gives it the "
                               f"method's sampler (DeviceStage.with_mask)")
        dense = tokens.image()  # (B, C, [T,] H, W): the normalised pixels the patches were cut from
        if is_video(run):
            ref = tokens.mask  # (B, N) True = hidden: VideoMAE's boolean mask
        else:
            n = tokens.num_tokens
            # MAE keeps the lowest-noise tokens: 0 + a rising ramp below 0.5 on ours' visible ones, 1 + the ramp on
            # the hidden ones, so argsort keeps exactly ours' visible tokens, in grid order as ours has them
            ramp = torch.arange(n, device=dense.device) / (2 * n)
            ref = tokens.mask.float() + ramp  # (B, N)
        sync(run.device)
        out.append(Batch(made, (dense, ref), tokens.batch_size))
    return out


def recipe_step(run: Run) -> Callable[[Mapping[str, Any]], StepOutput]:
    """`run.step` called as `recipes.pretrain`'s loop calls it: a list of micro-batches (one) per optimiser step,
    the progress before and after it; takes the device stage's method batch, returns the step's output (the loss
    stays on the device)."""
    done = [0]

    def step(batch: Mapping[str, Any]) -> StepOutput:
        total = run.total
        out = run.step([batch], min(done[0] / total, 1.0), progress_after=min((done[0] + 1) / total, 1.0))
        done[0] += 1
        return out

    return step


def build_reference(run: Run, batch: Batch, *, sdpa: bool = False) -> torch.nn.Module:
    """The baseline with the sizes of ours (encoder, decoder, grid, mask ratio) and ours' weights copied in."""
    method, tokens = run.method, batch.tokens
    enc, dec = method.encoder, method.decoder
    sizes = dict(dim=enc.dim, depth=enc.depth, heads=enc.heads, decoder_dim=dec.queries.proj.out_features,
                 decoder_depth=len(dec.blocks), decoder_heads=dec.blocks[0].attn.heads, sdpa=sdpa)
    grid, patch = tokens.grid, tokens.patch
    if is_video(run):
        ref = ReferenceVideoMAE(frames=grid[0] * patch[0], image=grid[1] * patch[1], tubelet=patch, **sizes)
    else:
        ref = ReferenceMAE(image=grid[0] * patch[0], patch=patch[0], mask_ratio=method.masking.ratio, **sizes)
        keep = int(tokens.num_tokens * (1 - ref.mask_ratio))
        if keep != tokens.num_visible:  # the reference's count rule must keep the tokens ours keeps
            raise ValueError(f"reference MAE keeps {keep} tokens, ours {tokens.num_visible}")
    load_from_ours(ref.to(run.device), method, grid)
    return ref


def sync(device: torch.device) -> None:
    """Waits for the device (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reference_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """timm's `add_weight_decay` as the references call it: no decay on 1-D parameters and biases."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": plain, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


class ReferenceStep:
    """The reference engines' step (MAE `engine_pretrain`, VideoMAE `engine_for_pretraining`).

    Args:
        model: a `ReferenceMAE` or `ReferenceVideoMAE`.
        modality: ours' modality spec (the normalisation the VideoMAE target undoes).
        device: where it runs.
        amp: autocast dtype, None for fp32; fp16 adds the references' GradScaler (on CUDA).
        lr: learning rate.
        betas: AdamW betas.
        weight_decay: weight decay of the decayed group.
    """

    def __init__(self, model: torch.nn.Module, modality: Any, *, device: torch.device, amp: torch.dtype | None,
                 lr: float, betas: Sequence[float] = (0.9, 0.95), weight_decay: float = 0.05) -> None:
        self.model, self.device, self.amp = model, device, amp
        self.video = isinstance(model, ReferenceVideoMAE)
        self.opt = torch.optim.AdamW(_reference_groups(model, weight_decay), lr=lr, betas=tuple(betas))
        # the references' NativeScaler: a GradScaler on CUDA (a no-op pass-through when disabled)
        self.scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and amp == torch.float16)
        self.mean = torch.tensor(modality.mean, device=device)
        self.std = torch.tensor(modality.std, device=device)

    def fp32_loss(self, batch: Batch) -> Tensor:
        """The loss without autocast (for the loss check)."""
        x, mask = batch.ref
        if not self.video:
            return self.model(x, mask)
        return torch.nn.functional.mse_loss(self.model(x, mask), self.model.labels(x, mask, self.mean, self.std))

    def loss(self, batch: Batch) -> Tensor:
        x, mask = batch.ref
        if self.video:
            labels = self.model.labels(x, mask, self.mean, self.std)  # outside autocast, as the engine does
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            if not self.video:
                return self.model(x, mask)
            return torch.nn.functional.mse_loss(self.model(x, mask), labels)

    def __call__(self, batch: Batch) -> Tensor:
        loss = self.loss(batch)
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(f"baseline loss is {value}")
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        grads = [p.grad.detach() for p in self.model.parameters() if p.grad is not None]
        torch.norm(torch.stack([torch.norm(g, 2.0) for g in grads]), 2.0)  # the engines' logged grad norm
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad()
        sync(self.device)
        return loss.detach()


def step_flops(run: Run, batch: Batch) -> float:
    """Matmul FLOPs of one training step of ours (2 per multiply-add; backward twice the forward, except the patch
    embedding, whose input needs no gradient). Norms, softmax and the loss are left out, as usual for MFU."""
    method, tokens = run.method, batch.tokens
    enc, dec = method.encoder, method.decoder
    n, p = tokens.num_tokens, tokens.patches.shape[-1]
    d, dd = enc.dim, dec.queries.proj.out_features
    visible = method.masking.visible_count(tokens.grid)  # the sampler's exact count
    prefix = enc.num_prefix
    ratio = enc.blocks[0].mlp.fc1.out_features / d

    def blocks(count: int, width: int, depth: int, mlp: float) -> float:
        linear = 2 * count * (4 + 2 * mlp) * width * width  # qkv, proj and the MLP
        return depth * (linear + 4 * count * count * width)  # + q k^T and attn v

    dec_ratio = dec.blocks[0].mlp.fc1.out_features / dd
    forward = blocks(visible + prefix, d, enc.depth, ratio) + 2 * (visible + prefix) * d * dd \
        + blocks(n + prefix, dd, len(dec.blocks), dec_ratio) + 2 * n * dd * p
    return batch.size * (3 * forward + 2 * 2 * visible * p * d)
