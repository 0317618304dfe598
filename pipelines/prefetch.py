"""Running the device stage ahead of the training step: a background thread on its own CUDA stream.

`DevicePrefetcher` takes collated worker batches and runs the device stage (H2D copies from pinned memory, nvjpeg
or NVDEC decode, crops, flips, patchify) in a thread on its own CUDA stream, `depth` batches ahead, so that the
main thread only launches training steps. The main thread makes its stream wait on each batch's event (a device-
side wait, not a host one) and marks the batch's tensors as used by its stream (`record_stream`), so the caching
allocator does not hand their memory back to the side stream while a step still reads it. On a CPU the same
class runs the stage in a thread (no streams), which is how the tests run it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor

__all__ = ["DevicePrefetcher", "tensors_of"]


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
