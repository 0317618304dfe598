"""Self-supervised methods, one module each, discovered without a list.

A method is an `nn.Module` with a class attribute `modalities` (the modality names it supports) whose
`forward(batch)` returns an `Output(loss, logs)`; it may define `update(progress)` (progress in [0, 1]) for
EMA teachers and schedules. Its encoder is passed in, made from config, and kept as the attribute `encoder`
(evaluation and export read it from there).

A batch is a dict produced by the data layer's device stage:
- `batch[modality]`: `Tokens` of that modality ("image", "video", "audio", "depth", "semseg"), normalised, with
  `visible` set when the pipeline sampled masks and None otherwise (the method then samples its own);
- `batch["frames"]`: a list of "image" `Tokens`, one per frame in time order (frame-pair and tracking methods);
- `batch["views"]`: a list of `Tokens`, one per augmented view (multi-view methods);
- `batch["waveform"]`: raw mono 16 kHz windows (B, N) for methods on waveforms (CPC);
- `batch["label"]`: optional int64 (B,) labels; `batch["key"]`: the sample keys.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from torch import nn

from mmssl.methods.output import Output

__all__ = ["Output", "all_methods"]


def all_methods() -> dict[str, type[nn.Module]]:
    """Every method class in this package's modules (an nn.Module with a `modalities` attribute), by module name."""
    found: dict[str, type[nn.Module]] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, nn.Module) and cls.__module__ == module.__name__ and hasattr(cls, "modalities"):
                found[cls.__name__.lower()] = cls
    return dict(sorted(found.items()))
