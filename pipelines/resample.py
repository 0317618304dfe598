"""Batched resized crops: every sample's box cut and resized by two batched matrix products, no per-sample work.

Separable resampling is linear along each axis, so resizing the window [start, start + length) of an axis of
`in_len` pixels to `out_len` pixels is one (out_len, in_len) matrix, zero outside the window. With one such matrix
per sample for rows and one for columns, a whole batch of crops of arbitrary boxes (and of images of different
sizes, zero-padded by `stack_padded`) is `Wy @ X @ Wx^T`: two `bmm` calls whose cost and kernel count do not
depend on the boxes, and nothing the host has to read back from the device.

The matrices reproduce `F.interpolate(..., mode="bilinear", align_corners=False, antialias=True)`, i.e. PIL's
resampling (Pillow's `ImagingResample`; torch's `_compute_indices_min_size_weights_aa`): output pixel i of a
window of `length` pixels has centre `(i + 0.5) * scale` with `scale = length / out_len`; input pixel j (centre
j + 0.5) gets the triangle filter `max(0, 1 - |j + 0.5 - centre| / support)` with `support = max(scale, 1)`, and
each output's weights are normalised to sum to one. When upscaling (support 1) this is plain bilinear
interpolation with edge clamping, which is what torch's antialiased path computes there as well.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["axis_weights", "resized_crops", "stack_padded", "ints_to_device", "crop_batch"]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def ints_to_device(values: Sequence[Sequence[int]] | Sequence[int] | np.ndarray,
                   device: torch.device | str) -> Tensor:
    """Host integers (e.g. crop boxes) as a long tensor on `device`, without making the host wait.

    `torch.tensor(values, device=...)` copies from pageable memory, which waits for the device's queue; here the
    values are written into a (pinned, on CUDA) host buffer through numpy and copied with `non_blocking=True`.
    """
    array = np.asarray(values, dtype=np.int64)
    device = torch.device(device)
    pinned = device.type == "cuda"
    host = torch.empty(array.shape, dtype=torch.long, pin_memory=pinned)
    host.numpy()[...] = array  # written through numpy: no tensor is made from host values at the dispatcher
    return host.to(device, non_blocking=pinned)  # the caching host allocator keeps the buffer until the copy ran


def axis_weights(in_len: int, out_len: int, start: Tensor, length: Tensor, *,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Per-sample resampling matrices (B, out_len, in_len) for one axis.

    Row i of sample b holds the weights with which output pixel i of the window [start[b], start[b] + length[b])
    resized to `out_len` pixels reads the `in_len` input pixels, exactly as torch's antialiased bilinear
    `F.interpolate` computes them; pixels outside the window get zero weight.

    Args:
        in_len: Pixels along the input axis (the padded size for padded batches).
        out_len: Pixels along the output axis.
        start: (B,) integer first pixel of each sample's window, on the target device.
        length: (B,) integer window length (>= 1; a zero length gives an all-zero matrix).
        dtype: Floating dtype of the result.

    Returns:
        (B, out_len, in_len) tensor on `start`'s device, built with tensor ops only (no host synchronisation).
    """
    device = start.device
    acc = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    scale = length.to(acc) / out_len  # (B,) input pixels per output pixel, torch's area_pixel_compute_scale
    support = scale.clamp_min(1.0).to(dtype)  # the triangle widens with the scale only when downscaling
    # output centres (i + 0.5) * scale lie up to `in_len` pixels out, where a float32 scale would be ~1e-5 pixel
    # off (so would every weight: torch's float32 kernel has that error); computed in float64 and split into a
    # whole part and a fraction, the distances below are exact up to the last subtraction of the fraction
    centre = scale[:, None] * (torch.arange(out_len, device=device, dtype=acc) + 0.5)  # (B, out)
    whole = centre.floor()
    frac, whole = (centre - whole).to(dtype), whole.to(dtype)
    # input pixel centres relative to the window start; outside the window they move to +inf, which the
    # filter maps to zero weight, so the window needs no separate mask over the (B, out, in) matrix
    rel = torch.arange(in_len, device=device, dtype=dtype) - start.to(dtype)[:, None] + 0.5  # (B, in)
    inside = (rel > 0) & (rel < length.to(dtype)[:, None] + 0.5)
    rel = torch.where(inside, rel, torch.inf)
    weights = rel[:, None, :] - whole[:, :, None]  # (B, out, in); integers and halves: exact in float32
    weights.sub_(frac[:, :, None])  # distance of each input pixel centre from each output centre
    # triangle filter max(0, 1 - |d| / support), in place: the matrix is the one large tensor made here
    weights.div_(support[:, None, None]).abs_().neg_().add_(1.0).clamp_(min=0.0)
    # every output centre lies within half a pixel of some window pixel, so each row sum is positive for
    # length >= 1; the floor only keeps an empty window at zeros instead of NaN
    weights.div_(weights.sum(dim=-1, keepdim=True).clamp_min_(torch.finfo(dtype).tiny))
    return weights


# torch's TF32 switch for CUDA matmuls is process-wide: one lock, so that two threads cropping at once cannot
# restore each other's saved value in the wrong order and leave TF32 switched off for good
_FP32_LOCK = threading.Lock()


@contextmanager
def _ieee_fp32(device: torch.device) -> Iterator[None]:
    """Full float32 matmuls on CUDA while the block launches them, whatever TF32 setting the caller chose.

    TF32 keeps 10 mantissa bits: weights and intermediates lose up to ~5e-4 of their value, up to ~0.25 grey
    levels on a 0..255 image, which would break the match with `F.interpolate`. 64 crops of 500 x 375 images to
    224 x 224 are ~23 GFLOP, about half a millisecond at full float32 on an H100/H200-class GPU, so exactness is
    cheap. cuBLAS reads the setting when a matmul is launched, so it is restored as soon as the (asynchronous)
    launches are queued.
    """
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    with _FP32_LOCK:
        if hasattr(matmul, "fp32_precision"):  # torch >= 2.9; mixing in the legacy flag there raises
            saved, matmul.fp32_precision = matmul.fp32_precision, "ieee"
            try:
                yield
            finally:
                matmul.fp32_precision = saved
        else:
            saved, matmul.allow_tf32 = matmul.allow_tf32, False
            try:
                yield
            finally:
                matmul.allow_tf32 = saved


def resized_crops(x: Tensor, boxes: Tensor, size: int | Sequence[int], *, channels_last: bool = False,
                  out_dtype: torch.dtype = torch.float32, max_bytes: int = 1 << 30) -> Tensor:
    """Cuts box b from sample b of `x` and resizes it to `size` (antialiased bilinear), for the whole batch at once.

    Equal to `F.interpolate(x[b, ..., top:top + h, left:left + w].float(), size, mode="bilinear",
    align_corners=False, antialias=True)` per sample, computed as two batched matmuls in float32 (TF32 is
    switched off for them on CUDA). Video clips share their sample's box across all T frames.

    Args:
        x: (B, C, H, W) or (B, T, C, H, W) images/clips, uint8 (0..255) or float; with `channels_last`,
            (B, H, W, C) or (B, T, H, W, C), the layout decoded video frames arrive in.
        boxes: (B, 4) integer (top, left, h, w) per sample, inside each sample's image; on x's device
            (`ints_to_device` builds it without a host wait).
        size: Output (height, width), or one int for square crops.
        channels_last: Whether the channel axis of `x` is its last one.
        out_dtype: Result dtype. uint8 inputs keep the 0..255 scale; integer outputs are rounded and clamped.
        max_bytes: Bound on the float32 working memory of one pass; larger batches run in several passes.

    Returns:
        (B, C, size[0], size[1]) or (B, T, C, size[0], size[1]) tensor of `out_dtype`, channels-first.
    """
    if x.dim() not in (4, 5) or boxes.shape != (x.shape[0], 4):
        raise ValueError(f"resized_crops: x must be (B, [T,] C, H, W) (or channel-last) and boxes (B, 4); got x "
                         f"{tuple(x.shape)}, boxes {tuple(boxes.shape)}")
    oh, ow = _pair(size)
    if channels_last:
        x = x.movedim(-1, -3)  # (B, [T,] C, H, W) view; the float copy below makes it contiguous
    n_all, lead, (in_h, in_w) = x.shape[0], tuple(x.shape[1:-2]), x.shape[-2:]
    planes = int(np.prod(lead))
    boxes = boxes.to(x.device, non_blocking=True)
    top, left, h, w = boxes.unbind(1)
    wy = axis_weights(in_h, oh, top, h)  # (B, oh, H)
    wx = axis_weights(in_w, ow, left, w)  # (B, ow, W)
    # multiply-adds per plane when contracting W first vs H first: the first product runs over the whole
    # (padded) input, so the longer axis goes first and the second product sees the shorter one
    w_first = ow * in_h * (in_w + oh) <= oh * in_w * (in_h + ow)
    inner = ow * in_h if w_first else oh * in_w
    per_sample = 4 * planes * (in_h * in_w + inner + oh * ow) + 4 * (oh * in_h + ow * in_w)
    step = max(1, max_bytes // max(per_sample, 1))
    out = torch.empty((n_all, *lead, oh, ow), dtype=out_dtype, device=x.device)
    with _ieee_fp32(x.device):
        for i in range(0, n_all, step):  # passes over chunks of the batch, fixed by shapes: no per-sample work
            j = min(i + step, n_all)
            part = _crop_pass(x[i:j], wy[i:j], wx[i:j], w_first)  # (n, *lead, oh, ow) float32, a strided view
            if not out_dtype.is_floating_point:  # a cast alone would truncate and wrap around
                part = part.round_().clamp_(torch.iinfo(out_dtype).min, torch.iinfo(out_dtype).max)
            out[i:j].copy_(part)  # one copy makes the result contiguous and casts it
    return out


def _crop_pass(x: Tensor, wy: Tensor, wx: Tensor, w_first: bool) -> Tensor:
    """`Wy @ X @ Wx^T` for a chunk x (n, *lead, H, W); returns a (n, *lead, oh, ow) float32 view.

    Each sample's planes are folded into one matrix so that both products are plain `bmm` calls with one weight
    matrix per sample: the weights are never expanded over channels or frames. The one copy of the input (cast
    to float32, which uint8 needs anyway) also lays it out so that this folding is a view.
    """
    n, lead, (in_h, in_w) = x.shape[0], x.shape[1:-2], x.shape[-2:]
    planes, oh, ow = int(np.prod(lead)), wy.shape[1], wx.shape[1]
    if w_first:
        xf = _float32_contiguous(x)  # (n, *lead, H, W)
        # wx (ow, W) @ X^T (W, planes * H): the transpose is a view, which bmm reads as a transposed operand
        t = torch.bmm(wx, xf.view(n, planes * in_h, in_w).transpose(1, 2))  # (n, ow, planes * H)
        res = torch.bmm(t.view(n, ow * planes, in_h), wy.transpose(1, 2))  # (n, ow * planes, oh)
        res = res.view(n, ow, *lead, oh)  # (n, ow, *lead, oh)
        return res.movedim(1, -1)  # (n, *lead, oh, ow) view
    xf = _float32_contiguous(x.movedim(-2, 1))  # (n, H, *lead, W)
    t = torch.bmm(wy, xf.view(n, in_h, planes * in_w))  # (n, oh, planes * W)
    res = torch.bmm(t.view(n, oh * planes, in_w), wx.transpose(1, 2))  # (n, oh * planes, ow)
    res = res.view(n, oh, *lead, ow)  # (n, oh, *lead, ow)
    return res.movedim(1, -2)  # (n, *lead, oh, ow) view


def _float32_contiguous(x: Tensor) -> Tensor:
    """x as contiguous float32 in one copy kernel that casts and permutes together (none if it already is)."""
    if x.dtype == torch.float32 and x.is_contiguous():
        return x
    # not `x.to(float32, memory_format=contiguous_format)`: for a permuted 5-D view it may keep the strides
    return torch.empty(x.shape, dtype=torch.float32, device=x.device).copy_(x)


def stack_padded(images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Images (C, H_i, W_i) of different sizes on one device as one zero-padded batch, in a fixed number of kernels.

    All images are concatenated flat (one `torch.cat`); every padded row (b, c, y) is then a window of W_max
    consecutive elements of that buffer starting at image b's row (c, y), so one gather of rows from an
    overlapping `unfold` view assembles the batch; rows below an image gather a blank window of trailing zeros,
    and one fill zeroes what lies right of each image.

    Args:
        images: Non-empty sequence of (C, H_i, W_i) tensors with the same C, dtype and device (e.g. nvjpeg's
            batched decode). Contiguous images are concatenated without an extra copy.

    Returns:
        (B, C, H_max, W_max) batch and (B, 2) long (H_i, W_i) on the images' device.
    """
    if not images:
        raise ValueError("stack_padded: no images")
    channels, device = images[0].shape[0], images[0].device
    if any(img.dim() != 3 or img.shape[0] != channels for img in images):
        raise ValueError(f"stack_padded: images must be (C, H, W) with one C; got "
                         f"{[tuple(img.shape) for img in images]}")
    heights = [int(img.shape[1]) for img in images]
    widths = [int(img.shape[2]) for img in images]
    n, h_max, w_max = len(images), max(heights), max(widths)
    numels = [channels * hh * ww for hh, ww in zip(heights, widths)]
    offsets = np.cumsum([0] + numels[:-1])
    total = int(sum(numels))
    # W_max trailing zeros: the last row window may run past the last image, and the window at `total` is blank
    flat = torch.cat([img.reshape(-1) for img in images] + [images[0].new_zeros(w_max)])  # (total + W_max,)
    rows = flat.unfold(0, w_max, 1)  # (total + 1, W_max) overlapping view: row s is flat[s : s + W_max]
    table = ints_to_device(np.stack([heights, widths, offsets], axis=1), device)  # (B, 3)
    hs, ws, offs = table[:, 0], table[:, 1], table[:, 2]
    ys = torch.arange(h_max, device=device)
    cs = torch.arange(channels, device=device)
    # start of row (c, y) of image b in `flat`; rows below an image read the all-zero window at `total`
    starts = (offs[:, None, None] + cs[None, :, None] * (hs * ws)[:, None, None]
              + ys[None, None, :] * ws[:, None, None])  # (B, C, H_max)
    starts = torch.where(ys[None, None, :] < hs[:, None, None], starts, total)
    # index_select reads the overlapping view in place (3x faster than advanced indexing on the CPU)
    batch = rows.index_select(0, starts.view(-1)).view(n, channels, h_max, w_max)  # (B, C, H_max, W_max)
    # right of an image a row window runs on into the image's next row: a fill, not a product with a 0/1 mask,
    # since for float images what it reads there may be inf
    beyond = torch.arange(w_max, device=device)[None, :] >= ws[:, None]  # (B, W_max)
    batch.masked_fill_(beyond[:, None, None, :], 0)
    return batch, table[:, :2]


def crop_batch(images: Tensor | Sequence[Tensor], boxes: Tensor, size: int | Sequence[int]) -> Tensor:
    """Each sample's box (top, left, h, w) of `images` ((B, [T,] C, H, W) or a list of (C, H_i, W_i)) resized to
    `size`, antialiased bilinear; uint8 stays uint8 (rounded), float stays float.

    On a GPU: one batched crop of the (padded) batch (`resized_crops`). On a CPU, where it runs in the loader's
    workers, torch's uint8 resampling per sample is an order of magnitude cheaper than those dense products; the
    two agree to within a grey level.
    """
    from pipelines.augment import resized_crop, resized_crop_uint8

    size, dtype = _pair(size), images[0].dtype
    if images[0].is_cuda:
        padded = images
        if not isinstance(images, Tensor):  # one zero-padded batch; clips (T, C, H, W) pad as T*C planes
            lead = images[0].shape[:-2]
            flat, _ = stack_padded([img.reshape(-1, *img.shape[-2:]) for img in images])  # (B, T*C, Hmax, Wmax)
            padded = flat.reshape(len(images), *lead, *flat.shape[-2:])  # (B, [T,] C, Hmax, Wmax)
        return resized_crops(padded, boxes, size, out_dtype=dtype if dtype == torch.uint8 else torch.float32)
    rows = [resized_crop_uint8(img, box, size) if dtype == torch.uint8 else resized_crop(img, box, size)
            for img, box in zip(images, boxes.tolist())]
    return torch.stack(rows)
