"""The plain (non-component) sections of a pretraining config: `optim` and `train`, with their defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from mmssl.config import ConfigError

__all__ = ["OptimSettings", "TrainSettings"]


def _check(where: str, ok: bool, what: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"config key '{where}' must be {what}, got {value!r}")


@dataclass
class OptimSettings:
    """Optimisation: AdamW, linear LR scaling, warmup + cosine as functions of progress.

    Attributes:
        blr: base learning rate; lr = blr * effective batch / 256 (effective = global batch * accum).
        lr: an absolute learning rate instead of the scaled one.
        batch_size: the paper's effective batch size (documentation; the run uses its own batch).
        betas: AdamW betas.
        weight_decay: weight decay (no decay on norms, biases, tokens).
        weight_decay_end: when set, weight decay follows a cosine to this value (DINO).
        warmup_epochs: warmup length, as a share of `epochs`.
        epochs: training length in epochs (unless `train.steps` is set).
        min_lr: final learning rate of the cosine.
        clip_grad: gradient-norm clipping threshold; None for none.
        accum: micro-batches accumulated per optimiser step.
    """

    blr: float = 1.5e-4
    lr: float | None = None
    batch_size: int | None = None
    betas: Sequence[float] = (0.9, 0.95)
    weight_decay: float = 0.05
    weight_decay_end: float | None = None
    warmup_epochs: float = 0.0
    epochs: float = 1.0
    min_lr: float = 0.0
    clip_grad: float | None = None
    accum: int = 1

    def __post_init__(self) -> None:
        _check("optim.accum", self.accum >= 1, "at least 1", self.accum)
        _check("optim.epochs", self.epochs > 0, "positive", self.epochs)
        _check("optim.warmup_epochs", self.warmup_epochs >= 0, "0 or more", self.warmup_epochs)
        for name in ("blr", "lr", "clip_grad"):
            value = getattr(self, name)
            _check(f"optim.{name}", value is None or value > 0, "positive", value)


@dataclass
class TrainSettings:
    """The loop.

    Attributes:
        steps: optimiser steps in total (default: epochs x batches per epoch / accum).
        seed: seed of model init and method randomness (data randomness uses the loader's seed).
        device: "auto" (CUDA when present), "cpu" or "cuda".
        precision: "auto" (bf16 autocast on GPU, fp32 on CPU), "bf16", "fp16" or "fp32".
        compile: torch.compile the method's forward: "auto" (on CUDA), true or false.
        log_every: steps between log lines.
        ckpt_every: steps between checkpoints (0: only at the end).
        figure_every: steps between figures (0: only at the end; -1: never).
        out_dir: where run folders are made.
        name: run name (default: the config name).
        max_nonfinite: stop after this many non-finite losses in a row (each such step is skipped).
        find_unused_parameters: DDP option (MAE's reference sets it).
        strategy: "ddp", or "fsdp" (FSDP2 fully_shard) for encoders too large for DDP.
        tensorboard: also log to TensorBoard when it is installed.
        progress: show a progress bar.
        threads: torch CPU threads of the training process; None: the cores the loader's workers (one thread
            each) leave free (oversubscribed cores make every step many times slower).
        prefetch: batches the device stage runs ahead of the step in a thread on its own CUDA stream; None: 2 on
            CUDA, none on a CPU (where the device stage runs in the loader's workers).
        stop_after: end this run after this step with a checkpoint, as a preempted job would (the schedule still
            runs to `steps`; `--resume` continues).
    """

    steps: int | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: bool | str = "auto"
    log_every: int = 10
    ckpt_every: int = 500
    figure_every: int = 0
    out_dir: str = "runs"
    name: str | None = None
    max_nonfinite: int = 10
    find_unused_parameters: bool = False
    strategy: str = "ddp"
    tensorboard: bool = True
    progress: bool = True
    stop_after: int | None = None
    threads: int | None = None
    prefetch: int | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "stop_after", "threads"):
            value = getattr(self, name)
            _check(f"train.{name}", value is None or value >= 1, "at least 1", value)
        _check("train.log_every", self.log_every >= 1, "at least 1", self.log_every)
        _check("train.ckpt_every", self.ckpt_every >= 0, "0 (only at the end) or more", self.ckpt_every)
        _check("train.max_nonfinite", self.max_nonfinite >= 1, "at least 1", self.max_nonfinite)
        _check("train.prefetch", self.prefetch is None or self.prefetch >= 0, "0 or more", self.prefetch)
        _check("train.precision", self.precision in ("auto", "bf16", "fp16", "fp32"), "auto, bf16, fp16 or fp32",
               self.precision)
        _check("train.strategy", self.strategy in ("ddp", "fsdp"), "ddp or fsdp", self.strategy)
        _check("train.compile", self.compile in ("auto", True, False), "auto, true or false", self.compile)
