"""The training step: one object that every recipe and every benchmark calls, so what is timed is what users run.

One call is one optimiser step: the schedule's learning rate and weight decay for this point of training, the
forward and backward of each micro-batch under autocast (DDP's gradient all-reduce only on the last one),
gradient clipping, the loss scaler for fp16, the AdamW update, and the method's `update(progress)` (EMA teachers,
temperature schedules). Nothing in it makes the host wait for the device:
- a non-finite loss is detected on the device: the fused AdamW kernel takes it as `found_inf` and leaves the
  weights, moments and step counts untouched (GradScaler skips a step the same way), and device counters keep how
  many steps were skipped and the longest run of them; the host reads the counters, with the logged loss, only
  when it logs (`TrainStep.drain`);
- the losses of a logging window are summed on the device, finite ones only.
A skipped step still counts as a step of the schedule, as GradScaler's skipped steps do.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from mmssl.train.optim import set_hyper

__all__ = ["TrainStep", "StepOutput", "NonFiniteLoss", "method_inputs"]


class NonFiniteLoss(RuntimeError):
    """Too many non-finite losses in a row: the run is diverging."""


@dataclass(frozen=True)
class StepOutput:
    """What one step leaves on the device: the mean loss over its micro-batches, whether it was finite (the update
    was applied), and the method's logs of the last micro-batch (tensors or floats, read at log time)."""

    loss: Tensor
    finite: Tensor
    logs: Mapping[str, Any]


def method_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch without the loader's bookkeeping (`__size__`, `__skipped__`, `__timing__`, ...): what a method
    reads. A compiled step then sees the same keys and kinds of values every step (no recompilation)."""
    return {k: v for k, v in batch.items() if not (k.startswith("__") and k.endswith("__"))}


class TrainStep:
    """One optimiser step of a method (see the module docstring).

    Args:
        method: the method (an nn.Module whose forward returns `Output(loss, logs)`).
        optimizer: its optimiser; a fused AdamW (`build_adamw`) skips non-finite steps without a host sync.
        model: what runs the forward: the method wrapped for DDP/FSDP, or the method itself (default).
        precision: autocast dtype (torch.bfloat16, torch.float16) or None for fp32; fp16 adds a GradScaler.
        compile: `torch.compile` the forward (encoder, decoder and loss in one graph where they allow it), from
            the second step on.
        clip_grad: gradient-norm clipping threshold; None for none.
        lr: learning rate as a function of progress in [0, 1]; None leaves the optimiser's.
        weight_decay: weight decay as a function of progress; None leaves the optimiser's.
    """

    def __init__(self, method: nn.Module, optimizer: torch.optim.Optimizer, *, model: nn.Module | None = None,
                 precision: torch.dtype | None = None, compile: bool = False, clip_grad: float | None = None,
                 lr: Callable[[float], float] | None = None,
                 weight_decay: Callable[[float], float] | None = None) -> None:
        self.method, self.optimizer = method, optimizer
        self.model = model if model is not None else method
        self.precision, self.clip_grad = precision, clip_grad
        self.lr, self.weight_decay = lr, weight_decay
        self.compiled = compile
        # the first step runs eager: it fills what the modules build lazily on first use (position tables for a
        # grid, cached per shape), which, filled inside a compiled graph, would make the next step recompile
        self.forward = self.model
        self._compiled = torch.compile(self.model) if compile else None
        self.device = next(method.parameters()).device
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == torch.float16 else None
        # the fused kernel reads `found_inf` and skips the update on the device; other optimisers cannot
        self.skips_on_device = bool(optimizer.defaults.get("fused")) or self.scaler is not None
        self._update = getattr(method, "update", None)
        zero = lambda dtype: torch.zeros((), dtype=dtype, device=self.device)  # noqa: E731
        self._loss_sum, self._finite, self._skipped = zero(torch.float32), zero(torch.long), zero(torch.long)
        self._run, self._longest = zero(torch.long), zero(torch.long)

    # -- the step ----------------------------------------------------------------------------------------------

    def __call__(self, batches: Sequence[Mapping[str, Any]], progress: float, *,
                 progress_after: float | None = None) -> StepOutput:
        """One optimiser step over `batches` (the micro-batches of gradient accumulation).

        Args:
            batches: method batches (what the device stage makes); their losses are averaged.
            progress: where training is, in [0, 1], before this step (sets the schedules).
            progress_after: where it is after it, passed to the method's `update` (default `progress`).
        """
        if not batches:
            raise ValueError("a training step needs at least one batch")
        opt = self.optimizer
        if self.lr is not None:
            set_hyper(opt, lr=self.lr(progress),
                      weight_decay=None if self.weight_decay is None else self.weight_decay(progress))
        losses, out = [], None
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            with self._no_sync(last), torch.autocast(self.device.type, dtype=self.precision or torch.float32,
                                                     enabled=self.precision is not None):
                out = self.forward(method_inputs(batch))
            loss = out.loss / len(batches)
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            losses.append(out.loss.detach().float())
        if self._compiled is not None:
            self.forward, self._compiled = self._compiled, None
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()
        finite = torch.isfinite(loss)
        self._apply(finite)
        self._count(loss, finite)
        if self._update is not None:
            self._update(progress if progress_after is None else progress_after)
        return StepOutput(loss=loss, finite=finite, logs=out.logs)

    def _no_sync(self, last: bool):
        """DDP all-reduces gradients only on the last micro-batch of a step."""
        if not last and isinstance(self.model, nn.parallel.DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _apply(self, finite: Tensor) -> None:
        """Clip, then update, skipping on the device when the loss was not finite."""
        opt = self.optimizer
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        if self.clip_grad:
            nn.utils.clip_grad_norm_(self.method.parameters(), self.clip_grad)
        if self.scaler is not None:
            # a non-finite loss makes non-finite gradients, which the scaler finds and skips (on the device with
            # a fused optimiser)
            self.scaler.step(opt)
            self.scaler.update()
        elif self.skips_on_device:
            opt.found_inf = (~finite).float()  # read by the fused AdamW kernel: 1 leaves everything untouched
            try:
                opt.step()
            finally:
                del opt.found_inf
        elif bool(finite):  # an optimiser without a fused kernel: the host has to look (a sync on a GPU)
            opt.step()
        opt.zero_grad(set_to_none=True)

    def _count(self, loss: Tensor, finite: Tensor) -> None:
        """Device counters for the logging window: finite loss sum, steps, skipped steps, runs of skips."""
        self._loss_sum += torch.where(finite, loss, torch.zeros_like(loss))
        self._finite += finite
        self._skipped += ~finite
        self._run = torch.where(finite, torch.zeros_like(self._run), self._run + 1)
        self._longest = torch.maximum(self._longest, self._run)

    # -- reading at log time ---------------------------------------------------------------------------------

    def drain(self) -> dict[str, float]:
        """Reads and resets the window's counters (one host sync): the mean finite loss (NaN when every step was
        skipped), skipped steps, and the longest run of consecutive skipped steps (runs continue across windows)."""
        loss_sum, finite, skipped, longest = torch.stack(
            [self._loss_sum.double(), self._finite.double(), self._skipped.double(), self._longest.double()]).tolist()
        for t in (self._loss_sum, self._finite, self._skipped):
            t.zero_()
        self._longest.copy_(self._run)
        return {"loss": loss_sum / finite if finite else math.nan, "skipped": int(skipped), "longest_skip": int(longest)}

    def check(self, counts: Mapping[str, float], *, max_nonfinite: int, step: int) -> None:
        """Raises `NonFiniteLoss` when `counts` (from `drain`) hold `max_nonfinite` skipped steps in a row."""
        if counts["longest_skip"] >= max_nonfinite:
            raise NonFiniteLoss(f"{int(counts['longest_skip'])} non-finite losses in a row by step {step}: lower the "
                                f"learning rate, enable clip_grad, or use precision=bf16/fp32")

    # -- checkpoints -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Optimiser and loss-scaler state (the method's weights are saved by the caller)."""
        return {"optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
