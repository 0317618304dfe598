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
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipelines.rng import sample_rng
from pipelines.sample import Sample, guarded

__all__ = ["Crop", "Augment", "crop_box", "resized_crop", "crop_images", "rgb_to_hsv", "hsv_to_rgb"]


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


@dataclass(frozen=True)
class Crop:
    """A RandomResizedCrop: output `size`, area fraction `scale`, aspect `ratio`, drawn under RNG view `view`."""

    size: int | tuple[int, int] = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    view: str = "view0"

    def box(self, rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
        return crop_box(rng, height, width, self.scale, self.ratio)


def crop_images(*, crops: Sequence[Crop], key: str = "image", maps: Sequence[str] = ("depth", "semseg"),
                map_scale: float = 0.25) -> Callable[[Iterable[Sample]], Iterator[Sample]]:
    """Worker stage: cuts each view's crop box (uint8, rounded) so that images of any size batch.

    Writes `{key}.{view}` (3, h, w) uint8 per crop and `{key}_size` (H, W) of the original; maps present in the sample get the same box: `depth.{view}`
    (float32, bilinear) and `semseg.{view}` (uint8 ids, nearest, at `map_scale` of the size, MultiMAE's stride 4).
    The device `Augment` of the same view then skips its own crop and draws the same remaining parameters.
    """
    def crop(sample: Sample) -> Sample:
        image = sample[key]  # (3, H, W) uint8
        out = {k: v for k, v in sample.items() if k != key and k not in maps}
        out[f"{key}_size"] = torch.tensor(image.shape[-2:])  # the device redraws the same box from it
        for c in crops:
            rng = sample_rng(sample.get("__seed__", 0), sample.get("__epoch__", 0), sample["__key__"], c.view)
            box = c.box(rng, image.shape[-2], image.shape[-1])
            size = _pair(c.size)
            out[f"{key}.{c.view}"] = resized_crop(image, box, size).round_().clamp_(0, 255).to(torch.uint8)
            for name in maps:
                if name in sample:
                    out[f"{name}.{c.view}"] = _crop_map(name, sample[name], box, size, map_scale)
        return out

    return guarded(crop, what="crop_images")


def _crop_map(name: str, value: Tensor, box: Sequence[int], size: tuple[int, int], map_scale: float) -> Tensor:
    """A depth map (H, W) cropped bilinearly to `size`, or a label map (H, W) by nearest at `map_scale`."""
    if name == "semseg":
        small = (max(1, round(size[0] * map_scale)), max(1, round(size[1] * map_scale)))
        return resized_crop(value[None], box, small, mode="nearest")[0]  # (h/4, w/4) ids
    return resized_crop(value[None].float(), box, size)[0]  # (h, w)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> HSV with hue in [0, 1)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, ((g - b) / safe) % 6, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue)) % 1.0
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([hue, sat, maxc], 1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """Inverse of `rgb_to_hsv`."""
    h, s, v = x.unbind(1)
    h6 = h * 6
    sector = torch.floor(h6)
    f = h6 - sector
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    sector = sector.long() % 6
    # each sector's (r, g, b) as picks among v, p, q, t: (6 sectors, 3 channels) indices into [v, p, q, t]
    table = torch.tensor([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]], device=x.device)
    choices = torch.stack([v, p, q, t], 1)  # (N, 4, H, W)
    pick = table[sector].permute(0, 3, 1, 2)  # (N, H, W, 3) -> (N, 3, H, W)
    return choices.gather(1, pick)


def _gray(x: Tensor) -> Tensor:
    return 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]  # (N, 1, H, W), ITU-R 601 luma as torchvision


def _blend(x: Tensor, other: Tensor | float, f: Tensor) -> Tensor:
    return (f * x + (1 - f) * other).clamp(0, 1)


def _gaussian_blur(x: Tensor, sigma: Tensor, kernel: int) -> Tensor:
    """Separable Gaussian blur of x (N, C, H, W) with one sigma per image, reflect padding."""
    n, c, h, w = x.shape
    taps = torch.arange(kernel, device=x.device, dtype=x.dtype) - kernel // 2
    weights = torch.exp(-taps[None] ** 2 / (2 * sigma[:, None] ** 2))  # (N, K)
    weights = (weights / weights.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N*C, K)
    flat = x.reshape(1, n * c, h, w)  # images as channels: one grouped conv blurs each with its own kernel
    pad = kernel // 2
    flat = F.conv2d(F.pad(flat, (pad, pad, 0, 0), mode="reflect"), weights[:, None, None, :], groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, pad, pad), mode="reflect"), weights[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w)


@dataclass(frozen=True)
class Augment:
    """One augmented view of a batch: crop (unless pre-cut), flip, colour jitter, grayscale, blur, solarize.

    Probabilities are per sample. `jitter` applies brightness/contrast/saturation/hue factors drawn uniformly in
    [1 - a, 1 + a] (hue: a shift in [-hue, hue]) in a random order per sample.
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

    def draw(self, rng: np.random.Generator, height: int, width: int) -> dict:
        """All parameters of one sample, crop first (the worker's `crop_images` draws exactly that prefix)."""
        box = self.crop.box(rng, height, width)
        u = rng.random(6)  # flip, jitter, gray, blur, solarize gates, then the blur sigma
        factors = rng.uniform(-1.0, 1.0, 4) * np.array([self.brightness, self.contrast, self.saturation, self.hue])
        return {"box": box, "flip": u[0] < self.flip, "jitter": u[1] < self.jitter, "gray": u[2] < self.grayscale,
                "blur": u[3] < self.blur, "solarize": u[4] < self.solarize,
                "sigma": self.blur_sigma[0] + u[5] * (self.blur_sigma[1] - self.blur_sigma[0]),
                "factors": factors, "order": rng.permutation(4)}

    def __call__(self, images: Tensor | Sequence[Tensor], ids: Sequence[tuple[int, int, str]], *,
                 sizes: Sequence[Sequence[int]] | None = None) -> Tensor:
        """Augments a batch.

        Args:
            images: uint8 (values 0..255) or float (0..1) images, (N, [T,] 3, H, W) stacked or a list of
                (..., 3, H_i, W_i) of any sizes; or, with `sizes`, the worker's crops of this view.
            ids: (seed, epoch, key) per sample, the RNG identity of each row.
            sizes: original (H, W) per sample when `images` were already cropped by `crop_images`.

        Returns:
            float32 (N, [T,] 3, h, w) in [0, 1] on the images' device.
        """
        if len(images) != len(ids):
            raise ValueError(f"{len(images)} images but {len(ids)} sample ids")
        precut = sizes is not None
        params = self.params(ids, sizes if precut else [tuple(img.shape[-2:]) for img in images])
        scale = 1.0 if images[0].is_floating_point() else 1 / 255
        if precut:
            x = torch.stack(list(images)).float() if not isinstance(images, Tensor) else images.float()
        else:
            size = _pair(self.crop.size)
            x = torch.stack([resized_crop(img, p["box"], size) for img, p in zip(images, params)])
        return self.pixels(x * scale, params)

    def params(self, ids: Sequence[tuple[int, int, str]], sizes: Sequence[Sequence[int]]) -> list[dict]:
        """Per-sample parameters from each sample's (seed, epoch, key) and image (H, W)."""
        return [self.draw(sample_rng(seed, epoch, key, self.view), int(h), int(w))
                for (seed, epoch, key), (h, w) in zip(ids, sizes)]

    def pixels(self, x: Tensor, params: Sequence[dict]) -> Tensor:
        """Flip and colour operations on cropped float images x (N, [T,] 3, h, w) with drawn parameters."""
        lead = x.shape[:-3]
        frames = math.prod(lead[1:])  # T for clips, 1 for images
        x = x.reshape(-1, *x.shape[-3:])  # (N*T, 3, h, w)
        dev = x.device

        def per_frame(values: Sequence, dtype=torch.bool) -> Tensor:
            return torch.as_tensor(np.asarray(values), dtype=dtype).to(dev).repeat_interleave(frames, dim=0)

        flip = per_frame([p["flip"] for p in params])
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        jitter = per_frame([p["jitter"] for p in params])
        if bool(jitter.any()):
            x = self._jitter(x, jitter, per_frame([p["factors"] for p in params], torch.float32),
                             per_frame([p["order"] for p in params], torch.long))
        gray = per_frame([p["gray"] for p in params])
        x = torch.where(gray[:, None, None, None], _gray(x).expand_as(x), x)
        blur = per_frame([p["blur"] for p in params])
        if bool(blur.any()):
            idx = blur.nonzero().flatten()
            sigma = per_frame([p["sigma"] for p in params], torch.float32)[idx]
            x = x.index_copy(0, idx, _gaussian_blur(x[idx], sigma, self.blur_kernel))
        sol = per_frame([p["solarize"] for p in params])
        x = torch.where(sol[:, None, None, None] & (x >= 0.5), 1.0 - x, x)
        return x.reshape(*lead, *x.shape[-3:])  # (N, [T,] 3, h, w)

    def _jitter(self, x: Tensor, on: Tensor, factors: Tensor, order: Tensor) -> Tensor:
        """Brightness (0), contrast (1), saturation (2), hue (3), in each sample's own order."""
        for step in range(4):
            for op in range(4):
                idx = (on & (order[:, step] == op)).nonzero().flatten()
                if len(idx) == 0:
                    continue
                part, f = x[idx], factors[idx, op]
                if op == 0:
                    part = _blend(part, 0.0, (1 + f)[:, None, None, None])
                elif op == 1:
                    mean = _gray(part).mean((1, 2, 3), keepdim=True)
                    part = _blend(part, mean, (1 + f)[:, None, None, None])
                elif op == 2:
                    part = _blend(part, _gray(part), (1 + f)[:, None, None, None])
                else:
                    hsv = rgb_to_hsv(part)
                    hsv = torch.cat([(hsv[:, :1] + f[:, None, None, None]) % 1.0, hsv[:, 1:]], 1)
                    part = hsv_to_rgb(hsv)
                x = x.index_copy(0, idx, part)
        return x
