"""Augmentations with per-sample parameters from the counter-based RNG, applied to whole batches on a device.

Every parameter of a sample's view (crop box, flip, jitter factors and order, grayscale, blur sigma, solarize) is
drawn from `sample_rng(seed, epoch, key, view)`, crop first, so a sample looks the same whichever batch, worker
or rank it lands in, and the crop can be cut either in the worker (`crop_images`, when images differ in size and
must be batched) or on the device (`Augment` on a list, after nvjpeg) with the same box. The pixel operations are
batched tensor ops with per-sample factors; video clips (N, T, C, H, W) share one draw across their T frames.

Crop boxes follow RandomResizedCrop's recipe (Szegedy et al., 2015; torchvision): ten tries at an area fraction
in `scale` and a log-uniform aspect in `ratio`, then a centre crop clamped to the ratio range. Colour jitter,
grayscale, Gaussian blur and solarize follow SimCLR/BYOL/DINO (Chen et al., 2020; Grill et al., 2020; Caron et
al., 2021): jitter in a random order per sample, blur with sigma in [0.1, 2], solarize above 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines import colour
from pipelines.frames import ClipFrames, clip_of
from mmssl.rng import sample_rng
from pipelines.sample import Sample, guarded

__all__ = ["Crop", "Augment", "pack", "crop_box", "resized_crop", "resized_crop_uint8", "crop_images", "crop_clips",
           "cut_image", "cut_clip", "cut_box", "cut_maps"]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def crop_box(rng: np.random.Generator, height: int, width: int, scale: Sequence[float],
             ratio: Sequence[float]) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box (top, left, h, w) drawn from `rng`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    aspect = width / height  # fallback: the largest centred box whose aspect lies in the ratio range
    if aspect < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif aspect > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(x: Tensor, box: Sequence[int], size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Cuts box (top, left, h, w) from x (..., C, H, W) and resizes it to `size` (antialiased for bilinear).

    Returns float32 for bilinear (values unchanged in scale) and the input dtype for nearest (class ids).
    """
    top, left, h, w = box
    lead = x.shape[:-3]
    part = x[..., top:top + h, left:left + w].reshape(-1, *x.shape[-3:-2], h, w)  # (N, C, h, w)
    if mode == "nearest":
        out = F.interpolate(part.float(), size=size, mode="nearest-exact").to(x.dtype)
    else:
        out = F.interpolate(part.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.reshape(*lead, out.shape[-3], *size)  # (..., C, size)


def resized_crop_uint8(x: Tensor, box: Sequence[int], size: tuple[int, int]) -> Tensor:
    """`resized_crop` of uint8 images (..., C, H, W) to uint8, bilinear with antialias.

    On the CPU, torch resamples uint8 channels-last images directly (its SIMD path), about 4x faster than going
    through float32 and rounding back; results differ from that route by at most one grey level. Elsewhere the
    float route is used. The result may keep channels-last strides; `.contiguous()` it where layout matters.
    """
    if x.dtype != torch.uint8 or x.device.type != "cpu":
        return resized_crop(x, box, size).round_().clamp_(0, 255).to(torch.uint8)
    top, left, h, w = box
    lead = x.shape[:-3]
    part = x[..., top:top + h, left:left + w].reshape(-1, *x.shape[-3:-2], h, w)  # (N, C, h, w)
    part = part.contiguous(memory_format=torch.channels_last)  # the layout the uint8 kernel vectorises
    out = F.interpolate(part, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.reshape(*lead, out.shape[-3], *size)  # (..., C, size), channels-last memory when lead is empty


@dataclass(frozen=True)
class Crop:
    """A RandomResizedCrop: output `size`, area fraction `scale`, aspect `ratio`, drawn under RNG view `view`."""

    size: int | tuple[int, int] = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    view: str = "view0"

    def box(self, rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
        return crop_box(rng, height, width, self.scale, self.ratio)


def cut_image(image: Tensor, box: Sequence[int], size: tuple[int, int], flip: bool = False) -> Tensor:
    """One crop of a uint8 image (3, H, W) resized to `size`, (3, h, w) uint8 contiguous; `flip` mirrors it in the
    copy that makes it contiguous (free)."""
    small = resized_crop_uint8(image, box, size)  # channels-last memory
    return small.flip(-1) if flip else small.contiguous()


def cut_clip(frames: Tensor, box: Sequence[int], size: tuple[int, int], flip: bool = False) -> Tensor:
    """One box of every frame of a uint8 clip (T, H, W, 3) resized to `size`, (T, h, w, 3) uint8 contiguous."""
    frames = frames.permute(0, 3, 1, 2)  # (T, H, W, 3) -> (T, 3, H, W), a view with channels last
    # (T, 3, h, w) channels-last memory -> (T, h, w, 3), a view; flip (a copy) or contiguous makes it dense
    small = resized_crop_uint8(frames, box, size).permute(0, 2, 3, 1)
    return small.flip(2) if flip else small.contiguous()


def cut_box(clips: Tensor | ClipFrames, j: int, box: Sequence[int], size: tuple[int, int],
            flip: bool = False) -> Tensor:
    """`cut_clip` of clip j of decoded clips (k, T, H, W, 3) or `ClipFrames`, gathering only the box's pixels."""
    top, left, h, w = (int(v) for v in box)
    return cut_clip(clip_of(clips, j, box), (0, 0, h, w), size, flip)


def cut_maps(sample: Sample, box: Sequence[int], size: tuple[int, int], view: str, *,
             maps: Sequence[str] = ("depth", "semseg"), map_scale: float = 0.25) -> dict[str, Tensor]:
    """The same box of each dense map present in `sample`: `depth.{view}` and `semseg.{view}`."""
    return {f"{name}.{view}": _crop_map(name, sample[name], box, size, map_scale) for name in maps if name in sample}


def crop_images(*, crops: Sequence[Crop], key: str = "image", maps: Sequence[str] = ("depth", "semseg"),
                map_scale: float = 0.25) -> Callable[[Iterable[Sample]], Iterator[Sample]]:
    """Worker stage: cuts each view's crop box (uint8, rounded) so that images of any size batch.

    Writes `{key}.{view}` (3, h, w) uint8 per crop and `{key}_size` (H, W) of the original; maps present in the
    sample get the same box: `depth.{view}` (float32, bilinear) and `semseg.{view}` (uint8 ids, nearest, at
    `map_scale` of the size, MultiMAE's stride 4). The device `Augment` of the same view then skips its own crop
    and draws the same remaining parameters.
    """
    def crop(sample: Sample) -> Sample:
        image = sample[key]  # (3, H, W) uint8
        out = {k: v for k, v in sample.items() if k != key and k not in maps}
        out[f"{key}_size"] = torch.tensor(image.shape[-2:])  # the device redraws the same box from it
        for c in crops:
            rng = sample_rng(sample.get("__seed__", 0), sample.get("__epoch__", 0), sample["__key__"], c.view)
            box = c.box(rng, image.shape[-2], image.shape[-1])
            size = _pair(c.size)
            out[f"{key}.{c.view}"] = cut_image(image, box, size)
            out.update(cut_maps(sample, box, size, c.view, maps=maps, map_scale=map_scale))
        return out

    return guarded(crop, what="crop_images")


def crop_clips(*, crop: Crop | None = None, view: "Augment | None" = None,
               key: str = "video") -> Callable[[Iterable[Sample]], Iterator[Sample]]:
    """Worker stage: cuts each clip's crop box from decoded clips (k, T, H, W, 3), the same box on all T frames.

    Writes `{key}.{view}` (k, T, h, w, 3) uint8, channel-last like the decoder's frames, and `{key}_size` (H, W),
    and drops the full frames, so the device stage (whose `Augment` of the same view draws the same box under the
    key "{key}/{j}" of clip j) only normalises and patchifies. Moving the resize here spreads it over the
    workers when the device is a CPU; keeping channels last makes the device's patchify copy runs of 3 * 16
    bytes instead of single bytes.

    Args:
        crop: the view's crop; the device stage then also flips.
        view: instead of `crop`, the whole `Augment` of the view: its flip is drawn here too (the same draw as on
            the device) and folded into the copy that makes the crop contiguous, for free; `{key}.{view}.flipped`
            (k,) records it so the device does not flip again.
        key: the sample entry holding the decoded clips.
    """
    if (crop is None) == (view is None):
        raise ValueError("crop_clips needs exactly one of crop= or view=")
    crop = view.crop if view is not None else crop
    size = _pair(crop.size)

    def cut(sample: Sample) -> Sample:
        clips = sample[key]  # (k, T, H, W, 3) uint8 clips, or the decoder's `ClipFrames`
        h, w = clips.shape[2:4]
        out = {k: v for k, v in sample.items() if k != key}
        rows, flips = [], []
        for j in range(clips.shape[0]):
            rng = sample_rng(sample.get("__seed__", 0), sample.get("__epoch__", 0), f"{sample['__key__']}/{j}",
                             crop.view)
            params = view.draw(rng, h, w) if view is not None else {"box": crop.box(rng, h, w), "flip": False}
            rows.append(cut_box(clips, j, params["box"], size, bool(params["flip"])))
            flips.append(bool(params["flip"]))
        out[f"{key}.{crop.view}"], out[f"{key}_size"] = torch.stack(rows), torch.tensor([h, w])
        if view is not None:
            out[f"{key}.{crop.view}.flipped"] = torch.tensor(flips)
        return out

    return guarded(cut, what="crop_clips")


def _crop_map(name: str, value: Tensor, box: Sequence[int], size: tuple[int, int], map_scale: float) -> Tensor:
    """A depth map (H, W) cropped bilinearly to `size`, or a label map (H, W) by nearest at `map_scale`."""
    if name == "semseg":
        small = (max(1, round(size[0] * map_scale)), max(1, round(size[1] * map_scale)))
        return resized_crop(value[None], box, small, mode="nearest")[0]  # (h/4, w/4) ids
    return resized_crop(value[None].float(), box, size)[0]  # (h, w)


@dataclass(frozen=True)
class Augment:
    """One augmented view of a batch: crop (unless pre-cut), flip, colour jitter, grayscale, blur, solarize.

    Probabilities are per sample. `jitter` applies brightness/contrast/saturation/hue factors drawn uniformly in
    [1 - a, 1 + a] (hue: a shift in [-hue, hue]) in a random order per sample. The parameters are drawn per
    sample (`draw`, `draws`; in the loader's workers) and applied to whole batches (`apply`; on the device).
    """

    crop: Crop = field(default_factory=Crop)
    flip: float = 0.5
    jitter: float = 0.0
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale: float = 0.0
    blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 23
    solarize: float = 0.0

    @property
    def view(self) -> str:
        return self.crop.view

    @property
    def size(self) -> tuple[int, int]:
        """The output (h, w)."""
        return _pair(self.crop.size)

    def draw(self, rng: np.random.Generator, height: int, width: int) -> dict:
        """All parameters of one sample, crop first (the worker's `crop_images` draws exactly that prefix)."""
        box = self.crop.box(rng, height, width)
        u = rng.random(6)  # flip, jitter, gray, blur, solarize gates, then the blur sigma
        factors = rng.uniform(-1.0, 1.0, 4) * np.array([self.brightness, self.contrast, self.saturation, self.hue])
        return {"box": box, "flip": u[0] < self.flip, "jitter": u[1] < self.jitter, "gray": u[2] < self.grayscale,
                "blur": u[3] < self.blur, "solarize": u[4] < self.solarize,
                "sigma": self.blur_sigma[0] + u[5] * (self.blur_sigma[1] - self.blur_sigma[0]),
                "factors": factors, "order": rng.permutation(4)}

    def draws(self, ids: Sequence[tuple[int, int, str]], sizes: Sequence[Sequence[int]]) -> dict[str, Tensor]:
        """The parameters of several samples as tensors (`pack` of their `draw`s), from each sample's
        (seed, epoch, key) and image (H, W)."""
        return pack([self.draw(sample_rng(seed, epoch, key, self.view), int(h), int(w))
                     for (seed, epoch, key), (h, w) in zip(ids, sizes)])

    @property
    def flip_only(self) -> bool:
        """True when the view changes no pixel value (crop and flip only), so uint8 frames can stay uint8."""
        return not (self.jitter or self.grayscale or self.blur or self.solarize)

    def apply(self, x: Tensor, draws: Mapping[str, Tensor], *, flipped: bool = False) -> Tensor:
        """Flip and colour operations on cropped images with drawn parameters, batched.

        Args:
            x: float images in [0, 1], (N, [T,] 3, h, w) (T frames share their sample's draw), overwritten; or
                uint8 images of a `flip_only` view, which stay uint8 (their cast is fused with the normalisation
                after patchify: a third of the memory traffic on the CPU).
            draws: `draws()` of the N samples (CPU or device tensors).
            flipped: the flips were applied upstream already (`crop_clips(view=...)`).
        """
        lead = x.shape[:-3]
        x5 = x.reshape(lead[0], -1, *x.shape[-3:])  # (N, F, 3, h, w): F = T for clips, 1 for images
        if not flipped:
            x5 = colour.flip(x5, draws["flip"])
        if x.dtype == torch.uint8:
            if not self.flip_only:
                raise ValueError(f"view {self.view!r} changes pixel values: give it float images in [0, 1]")
            return x5.reshape(x.shape)
        if self.jitter:
            x5 = colour.jitter(x5, draws["jitter"], draws["factors"], draws["order"])
        if self.grayscale:
            x5 = colour.grayscale(x5, draws["gray"])
        if self.blur:
            x5 = colour.gaussian_blur(x5, draws["blur"], draws["sigma"], self.blur_kernel)
        if self.solarize:
            x5 = colour.solarize(x5, draws["solarize"])
        return x5.reshape(x.shape)  # (N, [T,] 3, h, w)

    def __call__(self, images: Tensor | Sequence[Tensor], ids: Sequence[tuple[int, int, str]], *,
                 sizes: Sequence[Sequence[int]] | None = None, raw: bool = False,
                 flipped: bool = False) -> Tensor:
        """Draws, crops (unless pre-cut) and applies the view to a batch in one call (tests, small tools).

        Args:
            images: uint8 (values 0..255) or float (0..1) images, (N, [T,] 3, H, W) stacked or a list of
                (..., 3, H_i, W_i) of any sizes; or, with `sizes`, the worker's crops of this view.
            ids: (seed, epoch, key) per sample, the RNG identity of each row.
            sizes: original (H, W) per sample when `images` were already cropped by `crop_images`.
            raw: with pre-cut uint8 crops and a `flip_only` view, return them flipped and still uint8.
            flipped: the pre-cut crops already carry this view's flips (`crop_clips(view=...)` drew them).

        Returns:
            float32 (N, [T,] 3, h, w) in [0, 1] on the images' device (uint8 0..255 in the `raw` case).
        """
        if len(images) != len(ids):
            raise ValueError(f"{len(images)} images but {len(ids)} sample ids")
        precut = sizes is not None
        draws = self.draws(ids, sizes if precut else [tuple(img.shape[-2:]) for img in images])
        if precut:
            x = torch.stack(list(images)) if not isinstance(images, Tensor) else images
            if raw and x.dtype == torch.uint8 and self.flip_only:
                return self.apply(x.clone(), draws, flipped=flipped)
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.clone()
            return self.apply(x, draws, flipped=flipped)
        from pipelines.resample import crop_batch

        scale = 1.0 if images[0].is_floating_point() else 1 / 255
        x = crop_batch(images, draws["box"].to(images[0].device), self.size)  # the device stage's own crops
        return self.apply(x * scale, draws)


def pack(params: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
    """Per-sample `Augment.draw` dicts as tensors, one row per sample: box (N, 4) long, flip/jitter/gray/blur/
    solarize (N,) bool, factors (N, 4) float32, order (N, 4) long, sigma (N,) float32."""
    def column(name: str, dtype: torch.dtype) -> Tensor:
        return torch.as_tensor(np.asarray([p[name] for p in params]), dtype=dtype)

    out = {name: column(name, torch.bool) for name in ("flip", "jitter", "gray", "blur", "solarize")}
    out.update(box=column("box", torch.long).reshape(-1, 4), factors=column("factors", torch.float32).reshape(-1, 4),
               order=column("order", torch.long).reshape(-1, 4), sigma=column("sigma", torch.float32))
    return out
