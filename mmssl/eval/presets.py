"""Settings of label propagation and the published presets (CRW, DINO, SiamMAE), per task.

Sources (see REFERENCE.md §2): CRW `ajabri/videowalk` (README commands, `code/test.py`, `utils/test_utils.py`),
DINO `facebookresearch/dino:eval_video_segmentation.py`, and the SiamMAE re-implementation in
`alexandre-eymael/CropMAE:downstreams/propagation/start.py` (SiamMAE has no official code).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

from mmssl.config import ConfigError, parse_value

__all__ = ["PropagationSettings", "PRESETS", "TASKS", "preset", "apply_settings"]

TASKS = ("davis", "jhmdb", "vip")


@dataclass(frozen=True)
class PropagationSettings:
    """How labels travel from the annotated first frame to the rest of a video.

    Attributes:
        topk: neighbours each target cell takes its label from.
        context: previous frames (with their predicted soft labels) besides the first frame.
        radius: spatial neighbourhood in feature cells; None or <= 0 means no restriction.
        window: "disk" (Euclidean distance < radius, CRW's mask) or "square" (both offsets <= radius, DINO's).
        restrict_first: apply the radius to the first frame too (DINO) or only to the previous frames (CRW).
        temperature: softmax temperature over the top-k affinities.
        pad_first: fill the context with copies of the first frame at the start of a video (CRW pads the video
            with `videoLen` copies of frame 0), instead of using only the frames seen so far (DINO).
        norm_mask: min-max normalise each upsampled label channel before the argmax (DINO's `norm_mask`).
        label_downsample: how the first frame's labels reach the feature grid, "area" (fractions) or "nearest".
        size: encoder input size: None keeps the frame size, an int sets the short side (the long side keeps
            the aspect ratio), [h, w] sets both. Sides are then floored to a multiple of the feature stride.
        multiple: the long side is also floored to a multiple of this (DINO: 64); None for no extra rounding.
        sigma: Gaussian width (feature cells) of keypoint heat maps (CRW: 0.5).
        keypoint_topk: positions whose weighted mean decodes a keypoint from its heat map (CRW: 3).
        tile: query tile side (feature cells) of the chunked affinity; bounds memory, not the result.
        pixel_stride: feature stride of the raw-pixel baseline.
    """

    topk: int = 10
    context: int = 20
    radius: float | None = 12.0
    window: str = "disk"
    restrict_first: bool = False
    temperature: float = 0.05
    pad_first: bool = True
    norm_mask: bool = False
    label_downsample: str = "area"
    size: int | tuple[int, int] | None = None
    multiple: int | None = None
    sigma: float = 0.5
    keypoint_topk: int = 3
    tile: int = 8
    pixel_stride: int = 8

    def __post_init__(self) -> None:
        checks = {
            "topk": self.topk >= 1, "context": self.context >= 0, "temperature": self.temperature > 0,
            "window": self.window in ("disk", "square"), "tile": self.tile >= 1, "sigma": self.sigma > 0,
            "label_downsample": self.label_downsample in ("area", "nearest"), "keypoint_topk": self.keypoint_topk >= 1,
            "pixel_stride": self.pixel_stride >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"propagation setting {key}={getattr(self, key)!r} is not valid")
        if isinstance(self.size, list):
            object.__setattr__(self, "size", tuple(self.size))


# Per preset: settings shared by every task, then per-task changes (resolution, top-k).
PRESETS: dict[str, tuple[dict, dict[str, dict]]] = {
    # CRW README: topk 10, videoLen 20, radius 12, temperature 0.05 (after the fix of the doubled division);
    # DAVIS at full 480p, JHMDB and VIP at cropSize 320 / 560.
    "crw": (dict(topk=10, context=20, radius=12.0, window="disk", restrict_first=False, temperature=0.05,
                 pad_first=True, norm_mask=False),
            {"davis": dict(size=None), "jhmdb": dict(size=320), "vip": dict(size=560)}),
    # DINO: topk 5, n_last_frames 7, size_mask_neighborhood 12 (a square, on every context frame),
    # exp(aff / 0.1), norm_mask, short side 480 with the long side floored to a multiple of 64.
    "dino": (dict(topk=5, context=7, radius=12.0, window="square", restrict_first=True, temperature=0.1,
                  pad_first=False, norm_mask=True, label_downsample="nearest"),
             {"davis": dict(size=480, multiple=64), "jhmdb": dict(size=320, multiple=64),
              "vip": dict(size=480, multiple=64)}),
    # SiamMAE as re-implemented in CropMAE (CRW's code path): topk 7 (10 on VIP), video_len 20, radius 20,
    # temperature 0.7; DAVIS 480x880, JHMDB 320x320, VIP short side 880.
    "siammae": (dict(topk=7, context=20, radius=20.0, window="disk", restrict_first=False, temperature=0.7,
                     pad_first=True, norm_mask=False),
                {"davis": dict(size=(480, 880)), "jhmdb": dict(size=(320, 320)), "vip": dict(topk=10, size=880)}),
}


def preset(name: str, task: str) -> PropagationSettings:
    """The settings of a named preset for a task."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    shared, per_task = PRESETS[name]
    return PropagationSettings(**{**shared, **per_task[task]})


def apply_settings(settings: PropagationSettings, overrides: Mapping[str, object] | list[str]) -> PropagationSettings:
    """Returns `settings` with `key=value` strings (or a mapping) applied; an unknown key names the valid ones."""
    if not isinstance(overrides, Mapping):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            key, value = item.split("=", 1)
            pairs[key.strip()] = parse_value(value)
        overrides = pairs
    known = {f.name for f in dataclasses.fields(PropagationSettings)}
    for key in overrides:
        if key not in known:
            raise ConfigError(f"unknown propagation setting {key!r}; valid: {', '.join(sorted(known))}")
    values = {k: (None if v in ("none", "None") else v) for k, v in overrides.items()}
    return dataclasses.replace(settings, **values)
