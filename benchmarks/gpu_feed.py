"""Feeding the step without making it wait: the device stage of the next batches runs in a background thread.

`DevicePrefetcher` takes collated worker batches and runs the device stage (H2D copies from pinned memory, nvjpeg
or NVDEC decode, crops, flips, patchify, masks) in a thread on its own CUDA stream, a few batches ahead. The
device stage reads values on the host (masks drawn on the CPU and moved, `visible_from_mask`), which would stall
the main thread's queue of training kernels; on a side stream such a read waits only for the device stage's own
work. The main thread then only launches steps: it makes its stream wait on the batch's event and marks the
batch's tensors as used by its stream (`record_stream`), so the allocator does not hand their memory back to the
side stream while a step still reads it.

`StreamedNvdec` gives each NVDEC decode thread its own stream, for the same reason: `NvdecDecoder`'s pool
threads otherwise use the default stream, the one the training step runs on, and the host read in their frame
indexing would wait for the step. Both work on the CPU too (no streams there), which is how the tests run them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from pipelines.nvdec import NvdecDecoder

__all__ = ["DevicePrefetcher", "StreamedNvdec", "tensors_of"]


def tensors_of(value: Any) -> Iterator[Tensor]:
    """Every tensor inside a batch: dict values, list/tuple items, dataclass fields (Tokens), tensors."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors_of(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from tensors_of(v)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from tensors_of(getattr(value, f.name))


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


class DevicePrefetcher:
    """Iterates `stage(batch, device)` of the batches of `source`, made `depth` batches ahead in a thread.

    Args:
        source: collated batches (a StreamLoader, or any iterable).
        stage: the device stage, called as `stage(batch, device)`.
        device: where the batches go.
        depth: batches made ahead.

    Attributes:
        produced_s: seconds the thread spent making batches (device stage, host side).
        waited_s: seconds the consumer waited for a batch.
    """

    def __init__(self, source: Iterable[dict], stage: Callable[[dict, torch.device], dict], device: torch.device,
                 *, depth: int = 2) -> None:
        self.device, self.stage = torch.device(device), stage
        self.queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self.stop = threading.Event()
        self.produced_s = self.waited_s = 0.0
        self.thread = threading.Thread(target=self._run, args=(iter(source),), daemon=True, name="device-prefetch")
        self.thread.start()

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, batches: Iterator[dict]) -> None:
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        try:
            with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                for raw in batches:
                    start = time.perf_counter()
                    out = self.stage(raw, self.device)
                    event = None
                    if cuda:
                        event = torch.cuda.Event()
                        event.record(stream)
                    self.produced_s += time.perf_counter() - start
                    if not self._put((out, event)):
                        break
            self._put(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(_Failed(err))
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # a generator over DataLoader workers: ends them

    def __iter__(self) -> "DevicePrefetcher":
        return self

    def __next__(self) -> dict:
        start = time.perf_counter()
        item = self.queue.get()
        self.waited_s += time.perf_counter() - start
        if item is _END:
            raise StopIteration
        if isinstance(item, _Failed):
            raise item.error
        out, event = item
        if event is not None:
            main = torch.cuda.current_stream(self.device)
            main.wait_event(event)  # device-side ordering: no host wait
            for t in tensors_of(out):
                if t.is_cuda:
                    t.record_stream(main)
        return out

    def close(self) -> None:
        """Stops the thread (and with it the source's workers)."""
        self.stop.set()
        while self.thread.is_alive():
            try:
                self.queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self.thread.join()


class StreamedNvdec(NvdecDecoder):
    """`NvdecDecoder` whose decode threads each work on their own CUDA stream (same arguments).

    Each thread's frames are complete (its stream synchronised, which waits for that thread's work only) before
    the caller's stream stacks them, and they are marked as used by the caller's stream.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._streams: dict[int, torch.cuda.Stream] = {}
        self._consumer: torch.cuda.Stream | None = None

    def __call__(self, videos, index: Tensor, keyframes, device: torch.device | str) -> Tensor:
        device = torch.device(device)
        if device.type == "cuda":
            self._consumer = torch.cuda.current_stream(device)
        return super().__call__(videos, index, keyframes, device)

    def _gpu(self, data: bytes, plan: np.ndarray, keyframes, *, device: torch.device) -> Tensor:
        stream = self._streams.get(threading.get_ident())
        if stream is None:  # one per pool thread, made on its first video
            stream = self._streams[threading.get_ident()] = torch.cuda.Stream(device)
        with torch.cuda.stream(stream):
            frames = super()._gpu(data, plan, keyframes, device=device)
        stream.synchronize()
        if self._consumer is not None:
            frames.record_stream(self._consumer)
        return frames
