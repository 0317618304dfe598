"""The device stage: collated worker output -> method-ready `Tokens` batches, on the GPU or the CPU alike.

It runs in the main process after the loader collates a batch (workers never touch CUDA). What it does depends on
what the workers left: decoded frames or NVDEC plans for video, decoded/pre-cut images or JPEG bytes for nvjpeg,
waveforms for the batched fbank, maps for MultiMAE. Then the configured views augment whole batches with
per-sample parameters (`pipelines.augment`), the modality spec normalises and patchifies, and masks are drawn per
sample from `sample_generator(seed, epoch, key, "mask")` on the CPU, so the batch is the same on every device and
for every batch composition. Repeated sampling's k clips are folded into the batch (labels and keys repeated).
The output keys are those `mmssl.methods` documents: `image`/`video`/`audio`/`depth`/`semseg`, `frames`, `views`,
`label`, `key`, `ids` ((seed, epoch, key) per row, for methods that draw their own per-sample randomness, e.g.
jigsaw puzzles, through `pipelines.rng`) (and `waveform` for raw-audio methods).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from mmssl.modalities import Modality, get_modality
from mmssl.tokens import Tokens, visible_from_mask
from pipelines.augment import Augment, resized_crop
from pipelines.fbank import Fbank
from pipelines.images import decode_jpeg_batch
from pipelines.nvdec import NvdecDecoder
from pipelines.rng import sample_generator

__all__ = ["DeviceStage", "MODES"]

MODES = ("image", "video", "frames", "audio", "waveform", "multimodal")
Ids = list[tuple[int, int, str]]


def _ids(batch: dict[str, Any], repeat: int = 1) -> Ids:
    """(seed, epoch, key) per row; with repeat k, row j of a sample gets key "{key}/{j}" (its own draws)."""
    keys = list(batch["__key__"])
    seeds = _as_list(batch.get("__seed__"), len(keys))
    epochs = _as_list(batch.get("__epoch__"), len(keys))
    if repeat == 1:
        return list(zip(seeds, epochs, keys))
    return [(s, e, f"{k}/{j}") for s, e, k in zip(seeds, epochs, keys) for j in range(repeat)]


def _as_list(value: Any, n: int) -> list[int]:
    if value is None:
        return [0] * n
    return [int(v) for v in (value.tolist() if isinstance(value, Tensor) else value)]


class DeviceStage:
    """Builds the method batch from a collated batch on a device.

    Args:
        mode: "image", "video" (clips as video Tokens), "frames" (each frame of a clip/pair/group as image
            Tokens in `frames`), "audio" (fbank Tokens), "waveform" (raw windows, CPC) or "multimodal"
            (RGB + depth + semseg with one shared crop/flip).
        views: augmentations; one view fills the modality key, several fill `views` (DINO: 2 global + N local).
            None for video/frames keeps the decoded frames as they are.
        mask: a sampler from `mmssl.tokens` (RandomMask, TubeMask, ...) applied per sample; for "frames" it masks
            the last frame only (SiamMAE); None leaves masking to the method.
        fbank: the spectrogram module for "audio" (Audio-MAE's settings by default).
        nvdec: decoder for batches whose workers planned with backend="nvdec".
        pin_dtype: optional dtype for the patches (e.g. torch.bfloat16); masks and ids stay as they are.
        modalities: modality variants to tokenise with instead of the default specs, e.g.
            [{name: image, patch: [8, 8], size: [64, 64]}] for a tiny encoder (they must match the encoder's).
    """

    def __init__(self, *, mode: str = "image", views: Sequence[Augment] | None = None,
                 mask: Callable[..., Tensor] | None = None, fbank: Fbank | None = None,
                 nvdec: NvdecDecoder | None = None, pin_dtype: torch.dtype | None = None,
                 modalities: Sequence[str | Mapping[str, Any] | Modality] = ()) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode, self.views, self.mask = mode, list(views or []), mask
        self.fbank = fbank if fbank is not None else (Fbank() if mode == "audio" else None)
        self.nvdec, self.pin_dtype = nvdec or NvdecDecoder(), pin_dtype
        self.specs = {spec.name: spec for spec in (get_modality(m) for m in modalities)}
        if mode in ("image", "multimodal") and not self.views:
            raise ValueError(f"mode {mode!r} needs at least one view (an Augment with the crop size)")

    def __call__(self, batch: dict[str, Any], device: torch.device | str = "cpu") -> dict[str, Any]:
        device = torch.device(device)
        if not batch.get("__size__", len(batch.get("__key__", []))):
            raise ValueError("empty batch: every sample was skipped")
        out: dict[str, Any]
        if self.mode in ("video", "frames"):
            out = self._video(batch, device)
        elif self.mode in ("audio", "waveform"):
            out = self._audio(batch, device)
        elif self.mode == "image":
            out = self._image(batch, device)
        else:
            out = self._multimodal(batch, device)
        return out

    def _spec(self, name: str) -> Modality:
        """The configured variant of a modality, else its default spec."""
        return self.specs.get(name) or get_modality(name)

    # -- per mode -----------------------------------------------------------------------------------------------

    def _video(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        precut = [v for v in self.views if f"video.{v.view}" in batch]
        if precut:  # the workers cut the crops (`crop_clips`); only flip and colour are left
            return self._precut_video(batch, device)
        if "video" in batch:
            clips = batch["video"].to(device, non_blocking=True).permute(0, 1, 2, 5, 3, 4)  # (B,k,T,H,W,3) -> (B,k,T,3,H,W)
        elif "mp4" in batch and "frame_index" in batch:
            clips = self.nvdec(batch["mp4"], batch["frame_index"], batch["keyframes"], device)  # (B, k, T, 3, H, W)
        else:
            raise KeyError(f"video batch has neither decoded `video` nor `mp4` + `frame_index`: {sorted(batch)}")
        b, k = clips.shape[:2]
        clips = clips.reshape(b * k, *clips.shape[2:])  # (B*k, T, 3, H, W): repeated clips join the batch
        ids = _ids(batch, k)
        views = [aug(clips, ids) for aug in self.views] or [clips.float() / 255.0]  # each (N, T, 3, h, w)
        return self._clip_tokens(batch, views, ids, b, k, device)

    def _precut_video(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        b, k = batch[f"video.{self.views[0].view}"].shape[:2]
        ids = _ids(batch, k)
        sizes = [tuple(s) for s in batch["video_size"].tolist() for _ in range(k)]
        views = []
        for aug in self.views:
            cut = batch[f"video.{aug.view}"].to(device, non_blocking=True)  # (B, k, T, h, w, 3) uint8
            cut = cut.permute(0, 1, 2, 5, 3, 4)  # -> (B, k, T, 3, h, w), a strided view: channels stay last in memory
            # raw: flip-only views stay uint8 until `_tokens` fuses the cast with the normalisation
            flipped = f"video.{aug.view}.flipped" in batch  # the worker drew and applied the flips
            views.append(aug(cut.reshape(b * k, *cut.shape[2:]), ids, sizes=sizes, raw=True,
                             flipped=flipped))  # (B*k, T, 3, h, w)
        return self._clip_tokens(batch, views, ids, b, k, device)

    def _clip_tokens(self, batch: dict[str, Any], views: list[Tensor], ids: Ids, b: int, k: int,
                     device: torch.device) -> dict[str, Any]:
        out = self._common(batch, k, device)
        if self.mode == "frames":
            spec = self._spec("image")
            out["frames"] = [self._tokens(spec, views[0][:, t], ids if t == views[0].shape[1] - 1
                                          else None) for t in range(views[0].shape[1])]
            return out
        spec = self._spec("video")
        # (N, T, 3, h, w) -> (N, 3, T, h, w): the video spec patches (time, height, width) tubelets
        tokens = [self._tokens(spec, v.permute(0, 2, 1, 3, 4), ids) for v in views]
        self._place(out, "video", tokens)
        if "audio" in batch:  # the clip's own soundtrack (audio-visual methods)
            wave = batch["audio"].to(device).reshape(b * k, -1)  # (B, k, N) -> (B*k, N)
            out["audio"] = self._spectrogram(wave, batch["audio_len"].reshape(-1).to(device), None)
        return out

    def _audio(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        wave = batch["audio"].to(device, non_blocking=True)  # (B, N)
        out = self._common(batch, 1, device)
        if self.mode == "waveform":
            out["waveform"] = wave
            return out
        lengths = batch.get("audio_len")
        out["audio"] = self._spectrogram(wave, None if lengths is None else lengths.to(device), _ids(batch))
        return out

    def _spectrogram(self, wave: Tensor, lengths: Tensor | None, ids: Ids | None) -> Tokens:
        if self.fbank is None:  # a video stage meeting a soundtrack: AudioMAE's defaults, built once
            self.fbank = Fbank()
        fbank = self.fbank = self.fbank.to(wave.device)
        spec = self._spec("audio")
        feats = fbank(wave, lengths).unsqueeze(1)  # (B, T, F) -> (B, 1, T, F); Fbank already normalised
        return self._tokens(spec, feats, ids, normalize=False)

    def _image(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        ids = _ids(batch)
        out = self._common(batch, 1, device)
        spec = self._spec("image")
        tokens = [self._tokens(spec, self._view(aug, batch, ids, device)[0], ids)
                  for aug in self.views]
        self._place(out, "image", tokens)
        return out

    def _multimodal(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        ids = _ids(batch)
        aug = self.views[0]
        rgb, params = self._view(aug, batch, ids, device)
        out = self._common(batch, 1, device)
        image, depth, semseg = (self._spec(n) for n in ("image", "depth", "semseg"))
        out["image"] = self._tokens(image, rgb, None)
        size = tuple(rgb.shape[-2:])
        for name, spec in (("depth", depth), ("semseg", semseg)):
            if f"{name}.{aug.view}" in batch:
                maps = batch[f"{name}.{aug.view}"].to(device)  # (B, h, w), cut by the worker with the same box
            elif name in batch:
                # semseg at the spec's stride (MultiMAE: 56 x 56 for a 224 image), depth at the image's size
                small = tuple(s * spec.size[0] // image.size[0] for s in size) if name == "semseg" else size
                mode = "nearest" if name == "semseg" else "bilinear"
                maps = torch.stack([resized_crop(m.to(device)[None], p["box"], small, mode)[0]
                                    for m, p in zip(batch[name], params)])
            else:
                continue
            flip = torch.tensor([bool(p["flip"]) for p in params], device=device)[:, None, None]
            maps = torch.where(flip, maps.flip(-1), maps)  # the RGB view's flip, so maps stay registered
            if name == "semseg":
                out[name] = self._tokens(spec, maps.long(), None)
            else:
                out[name] = self._tokens(spec, maps.float().unsqueeze(1), None)  # (B, 1, h, w)
        return out

    # -- shared pieces ------------------------------------------------------------------------------------------

    def _view(self, aug: Augment, batch: dict[str, Any], ids: Ids, device: torch.device) -> tuple[Tensor, list]:
        """One augmented view (B, 3, h, w) and its parameters, from pre-cut crops, images or bytes.

        Float in [0, 1], except pre-cut uint8 crops of a flip-only view, which stay uint8 (see `_tokens`).
        """
        precut = batch.get(f"image.{aug.view}")
        if precut is not None:
            sizes = batch["image_size"].tolist()
            params = aug.params(ids, sizes)
            precut = precut.to(device, non_blocking=True)
            if precut.dtype == torch.uint8 and aug.flip_only:
                return aug._flip(precut.clone(), params), params
            return aug._apply(precut.float() / 255.0, params), params
        if "image" in batch:
            images = batch["image"]
            images = [img.to(device, non_blocking=True) for img in images]
        elif "image_bytes" in batch:
            images = decode_jpeg_batch(batch["image_bytes"], device)  # nvjpeg on CUDA
        else:
            raise KeyError(f"image batch has no `image.{aug.view}`, `image` or `image_bytes`: {sorted(batch)}")
        params = aug.params(ids, [tuple(img.shape[-2:]) for img in images])
        crops = torch.stack([resized_crop(img, p["box"], _size(aug)) for img, p in zip(images, params)]) / 255.0
        return aug._apply(crops, params), params

    def _tokens(self, spec, x: Tensor, ids: Ids | None, normalize: bool = True) -> Tokens:
        """Normalised (unless `normalize` is False) and patchified x (B, C, *axes), masked when ids are given.

        uint8 input (0..255) is patchified first and cast afterwards, with the normalisation fused into the
        cast (`Modality.normalize_patches`): the permuting copy moves bytes instead of floats.
        """
        if x.dtype == torch.uint8 and normalize and not spec.categorical and spec.mean is not None:
            tokens = spec.tokenize(x)
            tokens = replace(tokens, patches=spec.normalize_patches(tokens.patches))
        else:
            x = x.float() / 255.0 if x.dtype == torch.uint8 and not spec.categorical else x
            tokens = spec.tokenize(spec.normalize(x) if normalize else x)
        if self.pin_dtype is not None:
            tokens = tokens.to(dtype=self.pin_dtype)
        if self.mask is None or ids is None:
            return tokens
        # one generator per sample on the CPU: the same mask whatever the device or the batch around it
        masks = [self.mask(1, tokens.grid, generator=sample_generator(s, e, k, "mask")) for s, e, k in ids]
        # indices from the masks on the CPU: `visible_from_mask` checks counts, which on a GPU would make it wait
        visible = visible_from_mask(torch.cat(masks))  # (B, K)
        return replace(tokens, visible=visible.to(x.device, non_blocking=True))

    def _common(self, batch: dict[str, Any], repeat: int, device: torch.device) -> dict[str, Any]:
        keys = list(batch["__key__"])
        out: dict[str, Any] = {"key": [k for k in keys for _ in range(repeat)], "ids": _ids(batch, repeat)}
        if "cls" in batch and isinstance(batch["cls"], Tensor):
            out["label"] = batch["cls"].to(device).repeat_interleave(repeat)
        return out

    def _place(self, out: dict[str, Any], name: str, tokens: list[Tokens]) -> None:
        if len(tokens) == 1:
            out[name] = tokens[0]
        else:
            out["views"] = tokens


def _size(aug: Augment) -> tuple[int, int]:
    size = aug.crop.size
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
