"""Linear classifiers on cached frozen features, trained to convergence: the probe of `mmssl eval linear` and of
the speaker and phone probes.

The probe is multinomial logistic regression on features standardised with the training set's statistics. It is a
convex problem, so it is solved, not scheduled: full-batch L-BFGS (strong Wolfe line search) in float64 from zero
weights until the gradient or the loss stops moving. Nothing in it is random, so a run repeats exactly, and its
cost follows the data (iterations to convergence), not a fixed epoch count: CPC_audio's 10 epochs of Adam at lr
2e-4 is 40 steps on 1000 clips, which leaves MFCC, random and trained features alike at chance.

The L2 penalty (on the weights, not the bias) is chosen as in CLIP's linear-probe protocol (Radford et al., 2021,
§A.3): each value of a log grid is fitted on a seeded 80 % of the training rows and scored on the other 20 %; the
best (highest held-out accuracy, ties to the lower held-out loss) is refitted on every training row. Feature sources
of different widths (13 MFCCs, 256 contexts) each get the penalty that suits them.

`train_probe` keeps CPC_audio's mini-batch Adam schedule for reproducing its numbers (`--epochs`/`--lr`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["StandardisedLinear", "ProbeFit", "fit_probe", "solve_logistic", "train_probe", "probe_accuracy", "L2_GRID"]

L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
_CHUNK = 1 << 16  # rows per pass of the loss: bounds the (rows, classes) logits of a large phone set
# below this many multiply-adds per loss pass a pass is shorter than waking the intra-op thread pool: a 64 x 26
# problem measured 14x slower on 2 threads than on 1, and 1000 x 256 x 5 classes 10x, on a busy 2-core machine
_ONE_THREAD = 1 << 22


class StandardisedLinear(nn.Module):
    """Standardise with fixed training statistics, then one linear layer.

    Args:
        mean: per-feature training mean (D,).
        std: per-feature training standard deviation (D,), clamped away from zero.
        classes: number of classes.
    """

    def __init__(self, mean: Tensor, std: Tensor, classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(mean.numel(), classes, dtype=mean.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear((x.to(self.mean.dtype) - self.mean) / self.std)


@dataclass(frozen=True)
class ProbeFit:
    """A fitted probe and how it was fitted: the L2 penalty, L-BFGS iterations, and whether it converged."""

    probe: StandardisedLinear
    l2: float
    iterations: int
    converged: bool

    def describe(self) -> str:
        """e.g. "L2 1e-04, 37 L-BFGS iterations" (with "NOT converged" when the iteration cap was hit)."""
        return f"L2 {self.l2:.0e}, {self.iterations} L-BFGS iterations" + ("" if self.converged else ", NOT converged")


def _standardiser(feats: Tensor) -> tuple[Tensor, Tensor]:
    x = feats.double()
    return x.mean(dim=0), x.std(dim=0).nan_to_num(1.0).clamp_min(1e-6)  # one row: std is nan, take 1


def solve_logistic(x: Tensor, labels: Tensor, *, num_classes: int, l2: float, max_iter: int = 1000,
                   tol: float = 1e-7, init: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, int, bool]:
    """Minimises mean cross-entropy + l2 / 2 * ||W||^2 over W (D, C) and b (C,) with full-batch L-BFGS.

    Args:
        x: standardised features (N, D), float64.
        labels: class ids (N,).
        num_classes: C.
        l2: the penalty on W.
        max_iter: the cap on L-BFGS iterations.
        tol: stop when the largest gradient entry falls below it.
        init: starting (W, b) (a neighbouring penalty's solution); None starts from zero.

    Returns:
        W, b, the iterations run, and whether a tolerance (not the cap) stopped it.
    """
    if init is None:
        init = torch.zeros(x.shape[1], num_classes, dtype=x.dtype), torch.zeros(num_classes, dtype=x.dtype)
    weight, bias = (t.detach().clone().requires_grad_(True) for t in init)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter, tolerance_grad=tol,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")
    n = x.shape[0]

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=False)
        total = torch.zeros((), dtype=x.dtype)
        for start in range(0, n, _CHUNK):  # gradients accumulate chunk by chunk: one chunk's logits in memory
            logits = x[start:start + _CHUNK] @ weight + bias  # (n_chunk, D) @ (D, C) -> (n_chunk, C)
            loss = F.cross_entropy(logits, labels[start:start + _CHUNK], reduction="sum") / n
            loss.backward()
            total += loss.detach()
        penalty = 0.5 * l2 * weight.pow(2).sum()
        penalty.backward()
        return total + penalty.detach()

    threads = torch.get_num_threads()
    small = x.shape[0] * x.shape[1] * num_classes < _ONE_THREAD
    try:
        if small:
            torch.set_num_threads(1)
        with torch.enable_grad():  # callers often hold features made under no_grad
            opt.step(closure)
    finally:
        torch.set_num_threads(threads)  # the caller's setting, whatever happened
    iterations = int(opt.state[weight]["n_iter"])
    return weight.detach(), bias.detach(), iterations, iterations < max_iter


def _accuracy_and_loss(x: Tensor, labels: Tensor, weight: Tensor, bias: Tensor) -> tuple[float, float]:
    logits = x @ weight + bias  # (N, D) @ (D, C) -> (N, C)
    acc = (logits.argmax(dim=1) == labels).double().mean().item()
    return acc, F.cross_entropy(logits, labels).item()


def _select_l2(x: Tensor, labels: Tensor, *, num_classes: int, grid: Sequence[float], seed: int,
               max_iter: int) -> float:
    """The grid value whose fit on a seeded 80 % scores best on the other 20 % (x already standardised).

    The path runs from the largest penalty down, each fit starting from the last one's solution, and each stops
    after `max_iter` iterations: weakly penalised fits of nearly separable features ran past 1000 iterations while
    their held-out accuracy had stopped changing.
    """
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    held = max(1, len(labels) // 5)
    val, train = order[:held], order[held:]
    best: tuple[float, float, float] | None = None  # (-accuracy, loss, l2): min() picks the best
    init = None
    for l2 in sorted(grid, reverse=True):
        weight, bias, _, _ = solve_logistic(x[train], labels[train], num_classes=num_classes, l2=l2,
                                            max_iter=max_iter, init=init)
        init = weight, bias
        acc, loss = _accuracy_and_loss(x[val], labels[val], weight, bias)
        best = min(best, (-acc, loss, l2)) if best is not None else (-acc, loss, l2)
    return best[2]


def fit_probe(feats: Tensor, labels: Tensor, *, num_classes: int, l2: float | None = None,
              grid: Sequence[float] = L2_GRID, seed: int = 0, max_iter: int = 1000) -> ProbeFit:
    """A converged linear probe on frozen features (N, D) with labels (N,).

    Args:
        feats: training features.
        labels: class ids in [0, num_classes).
        num_classes: number of classes.
        l2: the L2 penalty; None chooses it from `grid` on a seeded held-out fifth of the training rows (when
            there are at least 10 rows; fewer take 1e-3), each trial fit capped at 200 iterations.
        grid: penalties tried when `l2` is None.
        seed: the split's seed.
        max_iter: the cap on L-BFGS iterations per fit.
    """
    if feats.shape[0] != labels.shape[0]:
        raise ValueError(f"{feats.shape[0]} features but {labels.shape[0]} labels")
    mean, std = _standardiser(feats)
    x = (feats.double() - mean) / std  # (N, D) standardised
    labels = labels.long()
    if l2 is None:
        l2 = _select_l2(x, labels, num_classes=num_classes, grid=grid, seed=seed, max_iter=min(max_iter, 200)) \
            if len(labels) >= 10 else 1e-3
    weight, bias, iterations, converged = solve_logistic(x, labels, num_classes=num_classes, l2=l2,
                                                         max_iter=max_iter)
    probe = StandardisedLinear(mean, std, num_classes)
    with torch.no_grad():
        probe.linear.weight.copy_(weight.t())  # (D, C) -> nn.Linear's (C, D)
        probe.linear.bias.copy_(bias)
    return ProbeFit(probe.eval(), float(l2), iterations, converged)


def train_probe(feats: Tensor, labels: Tensor, *, num_classes: int, epochs: int = 10, lr: float = 2e-4,
                batch_size: int = 256, seed: int = 0) -> nn.Module:
    """A linear probe trained with Adam on seeded mini-batches for a fixed schedule (CPC_audio's probe).

    Kept to reproduce the paper's protocol; `fit_probe` is the default because it converges on any data size.
    """
    mean, std = _standardiser(feats)
    probe = StandardisedLinear(mean.float(), std.float(), num_classes)
    with torch.random.fork_rng(devices=[]):  # a seeded init that leaves the caller's random state alone
        torch.manual_seed(seed)
        probe.linear.reset_parameters()
    opt = torch.optim.Adam(probe.linear.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    feats, n = feats.float(), len(labels)
    with torch.enable_grad():  # callers often hold features made under no_grad
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                loss = F.cross_entropy(probe(feats[idx]), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return probe.eval()


@torch.no_grad()
def probe_accuracy(probe: nn.Module, feats: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in percent (nan for no rows)."""
    if len(labels) == 0:
        return math.nan
    return 100.0 * (probe(feats).argmax(dim=1) == labels).float().mean().item()
