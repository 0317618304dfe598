"""What every method's forward returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["Output"]


@dataclass
class Output:
    """A method's result for one batch.

    Attributes:
        loss: the scalar to minimise.
        logs: named scalars to log (kept as tensors so the step needs no host sync; the recipe reads them).
    """

    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)
