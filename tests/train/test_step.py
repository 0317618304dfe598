"""TrainStep: the one training step of the recipe and the benchmarks (accumulation, schedules, clipping,
non-finite steps skipped on the device and counted, EMA update), with no host sync inside."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from mmssl.methods.output import Output
from mmssl.train.optim import build_adamw
from mmssl.train.step import NonFiniteLoss, TrainStep, method_inputs
from mmssl.train.syncs import count_host_syncs


class Regression(nn.Module):
    """A linear regression 'method'; `update` records the progress it is given (an EMA teacher's hook)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 1)
        self.progress: list[float] = []

    def forward(self, batch: dict) -> Output:
        assert not any(k.startswith("__") for k in batch)  # the loader's bookkeeping is not the method's input
        loss = ((self.net(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean() * batch.get("scale", 1.0)
        return Output(loss=loss, logs={"loss": loss.detach()})

    def update(self, progress: float) -> None:
        self.progress.append(progress)


def batch(seed: int, n: int = 8, **extra) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return {"x": x, "y": x.sum(1), "__size__": n, **extra}


def make(base_lr: float = 0.05, **kw) -> tuple[Regression, TrainStep]:
    method = Regression()
    return method, TrainStep(method, build_adamw(method, lr=base_lr, weight_decay=0.0), **kw)


def weights(method: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in method.parameters()]


def test_a_step_learns_sets_the_schedule_and_calls_update():
    method, step = make(clip_grad=1.0, lr=lambda p: 0.1 * (1 - p))
    first = float(step([batch(0)], 0.0).loss)
    for i in range(1, 30):
        step([batch(i)], i / 40, progress_after=(i + 1) / 40)
    assert float(step([batch(0)], 0.75).loss) < first / 4  # measured 0.008 of the first loss: 30x margin
    assert step.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.25)  # closed-form schedules: approx
    assert method.progress[0] == 0.0 and method.progress[1] == pytest.approx(2 / 40)


def test_accumulated_micro_batches_equal_one_batch_of_their_union():
    a, b = batch(1, n=4), batch(2, n=4)
    whole = {k: torch.cat([a[k], b[k]]) for k in ("x", "y")}
    m1, s1 = make()
    m2, s2 = make()
    with torch.no_grad():
        expected = (float(m1(method_inputs(a)).loss) + float(m1(method_inputs(b)).loss)) / 2
    out = s1([a, b], 0.0)
    s2([whole], 0.0)
    for p, q in zip(m1.parameters(), m2.parameters()):
        # the mean of two micro-batch gradients vs one over their union: float32 sums of 8 terms in another order on
        # weights ~0.5 (measured bit-exact after one AdamW step)
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
    # the mean of the micro-batch losses, float32 vs float64 means of the same two values (measured 2.9e-8)
    assert float(out.loss) == pytest.approx(expected, rel=1e-6)


def test_non_finite_steps_are_skipped_on_the_device_and_counted_at_log_time():
    method, step = make()
    step([batch(0)], 0.0)
    before, state = weights(method), {k: v.clone() for k, v in step.optimizer.state[method.net.weight].items()}
    out = step([batch(1, scale=float("nan"))], 0.1)
    assert not bool(out.finite)
    assert all(torch.equal(p, q) for p, q in zip(before, weights(method)))  # weights untouched ...
    after = step.optimizer.state[method.net.weight]
    assert all(torch.equal(state[k], after[k]) for k in state)  # ... and the moments and step count too
    step([batch(2)], 0.2)
    counts = step.drain()
    assert counts["skipped"] == 1 and counts["longest_skip"] == 1 and math.isfinite(counts["loss"])
    assert not all(torch.equal(p, q) for p, q in zip(before, weights(method)))  # finite steps still learn
    empty = step.drain()  # a window without steps has no loss
    assert math.isnan(empty["loss"]) and empty["skipped"] == 0 and empty["longest_skip"] == 0


def test_a_run_of_non_finite_steps_raises_at_the_log_line_even_across_windows():
    _, step = make()
    for i in range(3):
        step([batch(i, scale=float("inf"))], 0.0)
    first = step.drain()
    step.check(first, max_nonfinite=4, step=3)  # 3 in a row: not yet
    step([batch(9, scale=float("inf"))], 0.0)
    second = step.drain()
    assert second["longest_skip"] == 4 and math.isnan(second["loss"])
    with pytest.raises(NonFiniteLoss, match="4 non-finite losses in a row by step 4"):
        step.check(second, max_nonfinite=4, step=4)
    step([batch(10)], 0.0)
    step.drain()
    assert step.drain()["longest_skip"] == 0  # a finite step ends the run


def test_the_whole_step_reads_nothing_on_the_host():
    _, step = make(clip_grad=0.5, lr=lambda p: 0.01)
    step([batch(0)], 0.0)
    assert count_host_syncs(lambda: step([batch(1), batch(2)], 0.5)) == []
    assert count_host_syncs(lambda: step([batch(3, scale=float("nan"))], 0.6)) == []
    assert count_host_syncs(step.drain) == ["tolist"]  # the log line is where the host reads


def test_an_optimiser_without_a_fused_kernel_still_skips_non_finite_steps():
    method = Regression()
    step = TrainStep(method, torch.optim.SGD(method.parameters(), lr=0.1))
    assert not step.skips_on_device
    before = weights(method)
    step([batch(0, scale=float("nan"))], 0.0)
    assert all(torch.equal(p, q) for p, q in zip(before, weights(method)))
    assert step.drain()["skipped"] == 1


def test_state_dict_round_trip_continues_identically():
    m1, s1 = make()
    for i in range(3):
        s1([batch(i)], i / 10)
    saved = io.BytesIO()
    torch.save({"model": m1.state_dict(), **s1.state_dict()}, saved)  # a checkpoint: no tensors shared
    saved.seek(0)
    state = torch.load(saved)
    m2, s2 = make()
    m2.load_state_dict(state["model"])
    s2.load_state_dict(state)
    a, b = s1([batch(7)], 0.5), s2([batch(7)], 0.5)
    assert float(a.loss) == float(b.loss)
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))
