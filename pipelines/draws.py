"""The device stage's per-sample randomness, drawn in the loader's workers and collated into tensors.

Every random choice the device stage makes about a sample (each view's crop box, flip, jitter factors and order,
grayscale, blur sigma, solarize; the visible tokens of its mask) comes from the sample's own counter-based
generators, keyed by (seed, epoch, key, view) (`mmssl.rng`), so it is the same whichever batch, worker,
device or rank the sample lands in. Drawing them is per-sample Python work; `draw_sample` does it in the worker
that decodes the sample (the device stage's `planner()` stage) and writes small tensors:
- `draw.{view}.{name}`: the view's parameters per row (`pipelines.augment.pack`: box, flip, jitter, factors,
  order, gray, blur, sigma, solarize), rows = the k clips of a video (keys "{key}/{j}") or 1;
- `draw.{target}.visible`: (rows, K) sorted visible-token indices of the mask, per view (image, video), for the
  last frame ("frames") or the spectrogram ("audio"), from `sample_generator(seed, epoch, row key, "mask")`.
The loader collates them like any entry; the device stage then only reads tensors. `draw_batch` draws the same
values for a collated batch that lacks them (a batch made by hand, an evaluation loader without the planner).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import torch
from torch import Tensor

from mmssl.tokens import visible_from_mask
from pipelines.augment import cut_box, cut_image, cut_maps
from pipelines.images import decode_image_safely, encoded_size
from mmssl.rng import sample_generator
from pipelines.sample import Sample, guarded

if TYPE_CHECKING:
    from pipelines.device import DeviceStage

__all__ = ["PREFIX", "VIEW_FIELDS", "row_ids", "batch_row_ids", "clip_source", "draw_sample", "draw_batch",
           "has_draws", "planner"]

PREFIX = "draw."
VIEW_FIELDS = ("box", "flip", "jitter", "factors", "order", "gray", "blur", "sigma", "solarize")
Ids = list[tuple[int, int, str]]


def row_ids(seed: int, epoch: int, key: str, rows: int) -> Ids:
    """(seed, epoch, key) of each row of a sample: one row keeps its key; k clips of a video are "{key}/{j}"."""
    if rows == 1:
        return [(seed, epoch, key)]
    return [(seed, epoch, f"{key}/{j}") for j in range(rows)]


def clip_source(stage: "DeviceStage", entries: Mapping[str, Any]) -> Any:
    """What holds a video sample's (or batch's) clips: worker crops, decoded clips or an NVDEC plan, (k, T, ...)
    per sample (a batch adds a leading B)."""
    for key in [f"video.{v.view}" for v in stage.views] + ["video", "frame_index"]:
        if entries.get(key) is not None:
            return entries[key]
    raise KeyError(f"video sample {entries.get('__key__')!r} has no decoded clips (`video`), worker crops "
                   f"(`video.<view>`) or NVDEC plan (`frame_index`): {sorted(entries)}")


def _source_size(stage: "DeviceStage", sample: Mapping[str, Any]) -> tuple[int, int]:
    """(H, W) of the pixels the views crop from (or drew their crop from, when a worker cut it already)."""
    if stage.mode in ("video", "frames"):
        if any(f"video.{v.view}" in sample for v in stage.views):  # cut by `crop_clips` from frames this size
            return _pair(sample["video_size"])
        if sample.get("video") is not None:
            return int(sample["video"].shape[2]), int(sample["video"].shape[3])  # (k, T, H, W, 3)
        if "frame_index" in sample:  # an NVDEC plan: frames come at the decoder's size, else as stored
            if stage.nvdec.size is not None:
                return stage.nvdec.size
            if "video_size" in sample:
                return _pair(sample["video_size"])
        raise KeyError(f"video sample {sample.get('__key__')!r} does not say its frame size (`video_size`)")
    if "image_size" in sample:  # the original size, written by `crop_images` and by `decode_images(on="device")`
        return _pair(sample["image_size"])
    if sample.get("image") is not None:
        return int(sample["image"].shape[-2]), int(sample["image"].shape[-1])  # (3, H, W)
    if sample.get("image_bytes") is not None:
        return encoded_size(sample["image_bytes"])
    raise KeyError(f"image sample {sample.get('__key__')!r} has no `image`, `image_size` or `image_bytes`")


def _pair(value: Any) -> tuple[int, int]:
    h, w = (value.tolist() if isinstance(value, Tensor) else value)
    return int(h), int(w)


def _mask_targets(stage: "DeviceStage", sample: Mapping[str, Any], size: tuple[int, int] | None,
                  frames: int) -> list[tuple[str, tuple[int, ...]]]:
    """(target, token grid) of each mask the device stage applies to this sample."""
    if stage.mode == "audio":
        fbank = stage.fbank
        if fbank is None or fbank.target_length is None:
            raise ValueError("masks drawn in the workers need a fixed spectrogram length: Fbank(target_length=...)")
        spec = stage.spec("audio")
        return [("audio", _grid((fbank.target_length, fbank.mel.shape[0]), spec.patch))]
    if stage.mode == "frames":
        out = stage.views[0].size if stage.views else size
        return [("frames", _grid(out, stage.spec("image").patch))]
    if stage.mode == "video":
        spec = stage.spec("video")
        if not stage.views:
            return [("video", _grid((frames, *size), spec.patch))]
        return [(v.view, _grid((frames, *v.size), spec.patch)) for v in stage.views]
    if stage.mode == "image":
        spec = stage.spec("image")
        return [(v.view, _grid(v.size, spec.patch)) for v in stage.views]
    return []  # multimodal and waveform batches are masked by their methods


def _grid(extent, patch) -> tuple[int, ...]:
    if len(extent) != len(patch):
        raise ValueError(f"cannot patch an input of extent {tuple(extent)} with patch {tuple(patch)}")
    if any(int(e) % int(p) for e, p in zip(extent, patch)):
        raise ValueError(f"input extent {tuple(extent)} is not divisible by the patch {tuple(patch)}: choose a crop "
                         f"size (or clip length) that is a multiple of the patch")
    return tuple(int(e) // int(p) for e, p in zip(extent, patch))


def draw_sample(stage: "DeviceStage", sample: Sample, *, cut: bool = False) -> Sample:
    """The sample with its `draw.*` entries (see the module docstring).

    With `cut` (the device stage runs on a CPU, in this worker) each view's crop is also cut here, with its flip
    folded into the copy, as `crop_images` / `crop_clips(view=...)` would: only the small crops are then
    collated, never the whole frames, and samples of different sizes batch.
    """
    video = stage.mode in ("video", "frames")
    rows, frames = tuple(int(n) for n in clip_source(stage, sample).shape[:2]) if video else (1, 1)  # (k, T)
    ids = row_ids(int(sample.get("__seed__", 0)), int(sample.get("__epoch__", 0)), str(sample["__key__"]), rows)
    if cut and not video and sample.get("image") is None and sample.get("image_bytes") is not None:
        sample = _decoded(sample)  # bytes meant for nvjpeg, on a CPU: decoded here
    size = _source_size(stage, sample) if stage.views or (video and stage.mask is not None) else None
    out = dict(sample)
    cuts = []
    for aug in stage.views:
        draws = aug.draws(ids, [size] * rows)
        for name, value in draws.items():
            out[f"{PREFIX}{aug.view}.{name}"] = value  # (rows, ...)
        if cut:
            cuts.append(_cut(stage, aug, sample, out, draws, size))
    if cuts and all(cuts):
        for key in ("video", "image", "depth", "semseg", "image_bytes"):
            out.pop(key, None)  # cut into every view: the whole frames need not travel
    if stage.mask is not None:
        for target, grid in _mask_targets(stage, sample, size, frames):
            count = stage.mask.visible_count(grid) if hasattr(stage.mask, "visible_count") else None
            masks = [stage.mask(1, grid, generator=sample_generator(s, e, k, "mask")) for s, e, k in ids]
            out[f"{PREFIX}{target}.visible"] = visible_from_mask(torch.cat(masks), count)  # (rows, K)
    return out


def _decoded(sample: Sample) -> Sample:
    return {**sample, "image": decode_image_safely(sample["image_bytes"])}  # (3, H, W) uint8


def _cut(stage: "DeviceStage", aug: Any, sample: Mapping[str, Any], out: dict[str, Any], draws: dict[str, Tensor],
         size: tuple[int, int]) -> bool:
    """Writes the view's crops (flipped as drawn) unless a worker stage cut them already; False when there are no
    decoded pixels to cut (an NVDEC plan: the device stage decodes and cuts those)."""
    boxes, flips = draws["box"].tolist(), draws["flip"].tolist()
    if stage.mode in ("video", "frames"):
        if f"video.{aug.view}" in sample:
            return True
        if sample.get("video") is None:
            return False
        clips = sample["video"]  # (k, T, H, W, 3) uint8 clips or the decoder's `ClipFrames`
        out[f"video.{aug.view}"] = torch.stack([cut_box(clips, j, b, aug.size, f)
                                                for j, (b, f) in enumerate(zip(boxes, flips))])
        out[f"video.{aug.view}.flipped"], out["video_size"] = draws["flip"], torch.tensor(size)
        return True
    if f"image.{aug.view}" in sample:
        return True
    out[f"image.{aug.view}"] = cut_image(sample["image"], boxes[0], aug.size, flips[0])  # (3, h, w)
    out[f"image.{aug.view}.flipped"], out["image_size"] = draws["flip"][0], torch.tensor(size)
    if stage.mode == "multimodal":
        for name, value in cut_maps(sample, boxes[0], aug.size, aug.view).items():
            out[name] = value.flip(-1) if flips[0] else value  # registered with the flipped image
    return True


def planner(stage: "DeviceStage", *, cut: bool = False):
    """The worker stage that draws every sample's randomness for `stage` (and with `cut` cuts its crops); a bad
    sample becomes a skip."""
    return guarded(lambda sample: draw_sample(stage, sample, cut=cut), what="device_draws")


def expected(stage: "DeviceStage") -> list[str]:
    """The `draw.*` keys a batch for `stage` carries once drawn."""
    keys = [f"{PREFIX}{v.view}.flip" for v in stage.views]
    if stage.mask is not None and stage.mode in ("image", "video"):
        keys += [f"{PREFIX}{v.view}.visible" for v in stage.views] or [f"{PREFIX}video.visible"]
    elif stage.mask is not None and stage.mode in ("frames", "audio"):
        keys.append(f"{PREFIX}{stage.mode}.visible")
    return keys


def has_draws(stage: "DeviceStage", batch: Mapping[str, Any]) -> bool:
    return all(k in batch for k in expected(stage))


def _ints(value: Any, n: int) -> list[int]:
    """A collated per-sample number (a tensor, a list, or absent: 0) as n ints."""
    if value is None:
        return [0] * n
    return [int(v) for v in (value.tolist() if isinstance(value, Tensor) else value)]


def sample_ids(batch: Mapping[str, Any]) -> Ids:
    """(seed, epoch, key) of each sample of a collated batch."""
    keys = [str(k) for k in batch["__key__"]]
    return list(zip(_ints(batch.get("__seed__"), len(keys)), _ints(batch.get("__epoch__"), len(keys)), keys))


def batch_row_ids(batch: Mapping[str, Any], rows: int = 1) -> Ids:
    """(seed, epoch, key) of each row of a collated batch whose samples make `rows` rows each (`row_ids`)."""
    return [row for s, e, k in sample_ids(batch) for row in row_ids(s, e, k, rows)]


def _rows(batch: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The samples of a collated batch, as far as drawing needs them (one dict per sample)."""
    n = len(batch["__key__"])
    for b, (seed, epoch, key) in enumerate(sample_ids(batch)):
        row = {"__key__": key, "__seed__": seed, "__epoch__": epoch}
        for key, value in batch.items():
            if not key.startswith("__") and isinstance(value, (Tensor, list)) and len(value) == n:
                row[key] = value[b]
        yield row


def draw_batch(stage: "DeviceStage", batch: Mapping[str, Any]) -> dict[str, Any]:
    """A collated batch with the `draw.*` entries its samples would have had from the planner."""
    drawn = [draw_sample(stage, row) for row in _rows(batch)]
    out = dict(batch)
    for key in drawn[0]:
        if key.startswith(PREFIX):
            out[key] = torch.stack([d[key] for d in drawn])  # (B, rows, ...)
    return out
