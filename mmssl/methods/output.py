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
        logs: named scalars to log: tensors (read by the recipe at log time, so the step needs no host sync) or
            plain numbers the method already holds on the host.
    """

    loss: Tensor
    logs: dict[str, Tensor | float] = field(default_factory=dict)
