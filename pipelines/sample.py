"""The sample dict that flows through pipeline stages, and how a stage reports a sample it cannot use.

A sample is a dict: the shard's files by extension ("mp4", "jpg", "json", "cls", "depth.png", ...), raw bytes as
read from the tar, plus loader fields:
- `__key__`: the sample key (no dots), `__shard__`: the shard it came from, `__index__`: its global position;
- `__seed__`, `__epoch__`: with `__key__`, the inputs of `mmssl.rng` for per-sample randomness.
A stage that cannot use a sample (corrupt media, a missing file) does not raise and does not drop it silently: it
yields `skip(sample, reason)` instead, and every later stage passes such samples through untouched. The loader
removes them when it forms batches and counts them per shard and reason.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

__all__ = ["SKIP", "skip", "is_skipped", "guarded", "Sample"]

Sample = dict[str, Any]
SKIP = "__skip__"
_LOADER_FIELDS = ("__key__", "__shard__", "__index__", "__seed__", "__epoch__")


def skip(sample: Sample, reason: str) -> Sample:
    """A marker sample that keeps only the loader fields and the reason it was skipped."""
    marked = {k: sample[k] for k in _LOADER_FIELDS if k in sample}
    marked[SKIP] = reason
    return marked


def is_skipped(sample: Sample) -> bool:
    return SKIP in sample


class _Guarded:
    """A stage applying a per-sample function, turning its errors into skip markers (picklable for spawn)."""

    def __init__(self, fn: Callable[[Sample], Sample], errors: tuple[type[BaseException], ...], name: str) -> None:
        self.fn, self.errors, self.__name__ = fn, errors, name

    def __call__(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        for sample in samples:
            if is_skipped(sample):
                yield sample
                continue
            try:
                yield self.fn(sample)
            except self.errors as err:  # one bad sample must not end the stream
                yield skip(sample, f"{self.__name__}: {type(err).__name__}: {err}")


def guarded(fn: Callable[[Sample], Sample], errors: tuple[type[BaseException], ...] = (Exception,),
            what: str = "") -> Callable[[Iterable[Sample]], Iterator[Sample]]:
    """Makes a stage from a per-sample function: skip markers pass through, errors become skip markers.

    The reason names the stage (`what`, default the function name), the error type and its message. The stage
    pickles when `fn` does (a module-level function or a picklable object), as worker start methods other than
    fork require.
    """
    return _Guarded(fn, tuple(errors), what or getattr(fn, "__name__", "stage"))
