"""Image and dense-map decode: CPU decode in workers, or bytes kept for batched nvjpeg in the device stage.

- `decode_images(on="worker")` decodes JPEG/PNG with torchvision (libjpeg-turbo / libpng) to uint8 (3, H, W);
  `on="device"` leaves the bytes (and the size read from the header), so the device stage can call
  `torchvision.io.decode_jpeg(list, device="cuda")` on the whole batch (`decode_jpeg_batch`).
- `decode_maps` reads MultiMAE's extra inputs exactly: 16-bit depth PNGs to int32 (uint16 values kept), 8-bit
  label PNGs (grey or palette) to uint8 class ids; palette images are read as indices, never converted to RGB.
"""

from __future__ import annotations

import io
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from pipelines.sample import Sample, guarded

__all__ = ["decode_images", "decode_maps", "read_depth_png", "read_label_png", "decode_jpeg_batch", "encoded_size",
           "decode_image_safely", "image_kind", "IMAGE_KEYS"]

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def _entry(sample: Sample, keys: Sequence[str]) -> str:
    for key in keys:
        if key in sample:
            return key
    raise KeyError(f"sample {sample.get('__key__')!r} (shard {sample.get('__shard__')!r}) has none of {list(keys)}")


def _as_tensor(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)  # a writable copy: decoders want owned memory


def decode_images(*, keys: Sequence[str] = IMAGE_KEYS, on: str = "worker") -> Callable[[Iterable[Sample]],
                                                                                      Iterator[Sample]]:
    """A stage that decodes the image entry to `image` uint8 (3, H, W), or keeps its bytes for the device.

    Args:
        keys: entries to look for, first present wins.
        on: "worker" decodes here; "device" leaves the bytes as `image_bytes` for `decode_jpeg_batch`, with
            `image_size` (H, W) from the header (the crop boxes are drawn in the worker).
    """
    if on not in ("worker", "device"):
        raise ValueError(f"on must be 'worker' or 'device', got {on!r}")

    def decode(sample: Sample) -> Sample:
        entry = _entry(sample, keys)
        out = {k: v for k, v in sample.items() if k != entry}
        if on == "device":
            out["image_bytes"] = bytes(sample[entry])
            out["image_size"] = torch.tensor(encoded_size(out["image_bytes"]))
            return out
        out["image"] = decode_image_safely(sample[entry])  # (3, H, W) uint8
        return out

    return guarded(decode, what="decode_images")


def image_kind(data: bytes) -> str:
    """What the bytes are, from their magic number: "jpeg", "png", "webp", "gif", "bmp" or "unknown"."""
    head = bytes(data[:12])
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return "bmp" if head[:2] == b"BM" else "unknown"


def decode_image_safely(data: bytes) -> Tensor:
    """An encoded image as uint8 (3, H, W), decoded so that broken bytes raise instead of crashing the process.

    JPEG goes through torchvision (libjpeg-turbo, fast, raises on broken data); everything else through PIL:
    torchvision's PNG decoder ends the process with a segmentation fault on some corrupt files (libpng's error
    handler), where PIL raises. Bytes that are no image at all are refused by their magic number, whatever the
    member's extension says.
    """
    kind = image_kind(data)
    if kind == "unknown":
        raise ValueError(f"not an image (starts with {bytes(data[:8])!r})")
    if kind == "jpeg":
        from torchvision.io import ImageReadMode, decode_jpeg

        return decode_jpeg(_as_tensor(data), mode=ImageReadMode.RGB)
    from PIL import Image

    with Image.open(io.BytesIO(bytes(data))) as img:
        rgb = np.asarray(img.convert("RGB"))  # (H, W, 3); raises on truncated or corrupt data
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


def encoded_size(data: bytes) -> tuple[int, int]:
    """(H, W) of an encoded image, read from its header without decoding the pixels."""
    from PIL import Image

    with Image.open(io.BytesIO(bytes(data))) as img:
        width, height = img.size
    return height, width


def read_depth_png(data: bytes) -> np.ndarray:
    """A 16-bit (or 8-bit) grey PNG as (H, W) int32 holding the stored integers unchanged."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("I;16", "I;16B", "I;16L", "I", "L"):
            raise ValueError(f"depth PNG must be single-channel 8/16-bit, got mode {img.mode}")
        return np.asarray(img).astype(np.int32)  # PIL already swaps 16-bit PNG's big-endian samples


def read_label_png(data: bytes) -> np.ndarray:
    """An 8-bit grey or palette PNG as (H, W) uint8 class ids (palette indices, not colours)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("L", "P"):
            raise ValueError(f"label PNG must be 8-bit grey or palette, got mode {img.mode}")
        return np.asarray(img, dtype=np.uint8).copy()


def decode_maps(*, depth: str | None = "depth.png",
                semseg: str | None = "semseg.png") -> Callable[[Iterable[Sample]], Iterator[Sample]]:
    """A stage that decodes MultiMAE's maps to `depth` int32 (H, W) and `semseg` uint8 (H, W).

    Args:
        depth: entry of the 16-bit depth PNG, None to skip.
        semseg: entry of the 8-bit label PNG, None to skip.
    """
    def decode(sample: Sample) -> Sample:
        out = {k: v for k, v in sample.items() if k not in (depth, semseg)}
        for entry, name, reader in ((depth, "depth", read_depth_png), (semseg, "semseg", read_label_png)):
            if entry is None:
                continue
            if entry not in sample:
                raise KeyError(f"sample {sample.get('__key__')!r} (shard {sample.get('__shard__')!r}) lacks {entry}")
            out[name] = torch.from_numpy(reader(sample[entry]))
        return out

    return guarded(decode, what="decode_maps")


def decode_jpeg_batch(data: Sequence[bytes], device: torch.device | str) -> list[Tensor]:
    """Decodes a batch of encoded images on `device` (nvjpeg on CUDA), each (3, H, W) uint8.

    Non-JPEG entries (PNG, WebP) decode on the CPU and are moved, since nvjpeg reads only JPEG.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    tensors = [_as_tensor(d) for d in data]
    is_jpeg = [image_kind(d) == "jpeg" for d in data]
    out: list[Tensor | None] = [None] * len(tensors)
    jpegs = [i for i, j in enumerate(is_jpeg) if j]
    if jpegs and device.type == "cuda":
        decoded = decode_jpeg([tensors[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
        for i, img in zip(jpegs, decoded):
            out[i] = img
    for i, img in enumerate(out):
        if img is None:
            out[i] = decode_image_safely(data[i]).to(device)
    return out  # type: ignore[return-value]
