"""The device stage: collated worker output -> method-ready `Tokens` batches, with batched tensor work only.

Its per-sample randomness (crop boxes, flips, colour draws, masks turned into visible indices) is drawn in the
loader's workers by its `planner()` stage (`pipelines.draws`), so here every operation covers the whole batch:
- images: pre-cut uint8 crops from the workers (`crop_images`), or whole images / JPEG bytes (nvjpeg: one batched
  decode on CUDA) padded into one batch and cut with one batched resized crop (`pipelines.resample`);
- video: pre-cut clips (`crop_clips`), decoded clips or NVDEC frames, cut the same way with a box per clip;
- audio: the batched Kaldi fbank; raw windows for "waveform";
then the views' flips and colour operations (`Augment.apply`), the modality spec's normalisation and patchify,
and the drawn visible indices. Repeated sampling's k clips are folded into the batch (labels and keys repeated).
Nothing here reads values back from a GPU, so the stage can run ahead of the training step on its own stream
(`pipelines.prefetch`); on a CPU the loader runs it inside its workers on each worker's batch (`pipelines.feed`).
The output keys are those `mmssl.methods` documents: `image`/`video`/`audio`/`depth`/`semseg`, `frames`,
`views`, `label`, `key`, `ids` ((seed, epoch, key) per row, for methods that draw their own per-sample
randomness, e.g. jigsaw puzzles, through `mmssl.rng`) (and `waveform` for raw-audio methods).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from mmssl.modalities import Modality, get_modality
from mmssl.tokens import Tokens
from pipelines import colour
from pipelines.augment import Augment, resized_crop
from pipelines.collate import transfer_empty
from pipelines.draws import PREFIX, VIEW_FIELDS, batch_row_ids, clip_source, draw_batch, has_draws, planner
from pipelines.fbank import Fbank
from pipelines.images import decode_jpeg_batch
from pipelines.nvdec import NvdecDecoder
from pipelines.resample import crop_batch

__all__ = ["DeviceStage", "MODES", "BOOKKEEPING"]

MODES = ("image", "video", "frames", "audio", "waveform", "multimodal")
BOOKKEEPING = ("__size__", "__skipped__", "__timing__")  # the loader's entries, kept for its statistics


def _to(x: Tensor, device: torch.device) -> Tensor:
    return x.to(device, non_blocking=True)


def _handover(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor | None:
    """Where a CPU stage in a loader worker writes its output: shared memory, handed over without a copy."""
    return transfer_empty(shape, dtype) if device.type == "cpu" else None


def _patched_shape(spec: Modality, x: Tensor) -> tuple[int, int, int]:
    """(B, N, P) of `spec.tokenize(x)`."""
    axes = x.shape[-len(spec.patch):]
    channels = 1 if x.dim() == len(spec.patch) + 1 else x.shape[1]
    return (x.shape[0], math.prod(a // p for a, p in zip(axes, spec.patch)), math.prod(spec.patch) * channels)


class DeviceStage:
    """Builds the method batch from a collated batch on a device.

    Args:
        mode: "image", "video" (clips as video Tokens), "frames" (each frame of a clip/pair/group as image
            Tokens in `frames`), "audio" (fbank Tokens), "waveform" (raw windows, CPC) or "multimodal"
            (RGB + depth + semseg with one shared crop/flip).
        views: augmentations; one view fills the modality key, several fill `views` (DINO: 2 global + N local).
            None for video/frames keeps the decoded frames as they are.
        mask: a sampler from `mmssl.tokens` (RandomMask, TubeMask, ...) applied per sample; for "frames" it masks
            the last frame only (SiamMAE). None leaves masking to the method, unless the recipe gives the
            stage its method's sampler (`with_mask`), which it does for the masked-modelling methods.
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

    def spec(self, name: str) -> Modality:
        """The configured variant of a modality, else its default spec."""
        return self.specs.get(name) or get_modality(name)

    def with_mask(self, mask: Callable[..., Tensor] | None) -> "DeviceStage":
        """Uses `mask` (a method's sampler) when the stage has none and its mode masks tokens; returns self."""
        if self.mask is None and mask is not None and self.mode in ("image", "video", "frames", "audio"):
            self.mask = mask
        return self

    def check(self) -> None:
        """Raises ConfigError when a view's crop does not split into whole patches of its modality (checked when
        the run is built, not at the first batch)."""
        from mmssl.config import ConfigError

        name = {"video": "video", "audio": None, "waveform": None}.get(self.mode, "image")
        if name is None:
            return
        patch = self.spec(name).patch[-2:]  # the spatial extent; a clip's length is checked per sample
        for i, aug in enumerate(self.views):
            if any(s % p for s, p in zip(aug.size, patch)):
                raise ConfigError(f"config key 'data.device.views.{i}' crops {aug.size[0]}x{aug.size[1]}, which the "
                                  f"{name} patch {tuple(patch)} does not divide: make the crop size a multiple of it")

    def planner(self, *, cut: bool = False):
        """The loader stage that draws each sample's randomness in the workers (`pipelines.draws`); with `cut`
        (when this stage runs on a CPU, in the workers) it also cuts each view's crop there, per sample."""
        return planner(self, cut=cut)

    def __call__(self, batch: dict[str, Any], device: torch.device | str = "cpu") -> dict[str, Any]:
        device = torch.device(device)
        if not batch.get("__size__", len(batch.get("__key__", []))):
            raise ValueError("empty batch: every sample was skipped")
        if not has_draws(self, batch):  # made without the planner (by hand, or an evaluation loader)
            batch = draw_batch(self, batch)
        if self.mode in ("video", "frames"):
            out = self._video(batch, device)
        elif self.mode in ("audio", "waveform"):
            out = self._audio(batch, device)
        elif self.mode == "image":
            out = self._image(batch, device)
        else:
            out = self._multimodal(batch, device)
        out.update({k: batch[k] for k in BOOKKEEPING if k in batch})
        return out

    # -- drawn values ---------------------------------------------------------------------------------------

    def _draws(self, batch: dict[str, Any], view: str, device: torch.device) -> dict[str, Tensor]:
        """A view's parameters, one row per clip: (B, k, ...) -> (B*k, ...), on `device`."""
        return {name: _to(batch[f"{PREFIX}{view}.{name}"].flatten(0, 1), device) for name in VIEW_FIELDS}

    def _visible(self, batch: dict[str, Any], target: str, device: torch.device) -> Tensor | None:
        value = batch.get(f"{PREFIX}{target}.visible")
        return None if value is None or self.mask is None else _to(value.flatten(0, 1), device)  # (B*k, K)

    # -- per mode -------------------------------------------------------------------------------------------

    def _video(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        k = int(clip_source(self, batch).shape[1])  # (B, k, T, ...)
        out = self._common(batch, k, device)
        views = [self._clip_view(aug, batch, self._draws(batch, aug.view, device), device)
                 for aug in self.views]  # each (B*k, T, 3, h, w)
        if not views:
            frames = self._frames(batch, device)  # (B*k, T, H, W, 3)
            views = [frames.permute(0, 1, 4, 2, 3)]  # -> (B*k, T, 3, H, W), uint8: the cast is fused later
        if self.mode == "frames":
            spec, last = self.spec("image"), views[0].shape[1] - 1
            visible = self._visible(batch, "frames", device)
            out["frames"] = [self._tokens(spec, views[0][:, t], visible if t == last else None)
                             for t in range(views[0].shape[1])]
            return out
        spec = self.spec("video")
        targets = [aug.view for aug in self.views] or ["video"]
        # (N, T, 3, h, w) -> (N, 3, T, h, w): the video spec patches (time, height, width) tubelets
        tokens = [self._tokens(spec, v.permute(0, 2, 1, 3, 4), self._visible(batch, t, device))
                  for v, t in zip(views, targets)]
        self._place(out, "video", tokens)
        if "audio" in batch:  # the clip's own soundtrack (audio-visual methods)
            wave = _to(batch["audio"], device).flatten(0, 1)  # (B, k, N) -> (B*k, N)
            out["audio"] = self._spectrogram(wave, _to(batch["audio_len"].reshape(-1), device), None)
        return out

    def _frames(self, batch: dict[str, Any], device: torch.device) -> Tensor:
        """Whole decoded frames (B*k, T, H, W, 3) uint8: from the workers' decode, or NVDEC's on the device."""
        if "video" in batch:
            return _to(batch["video"], device).flatten(0, 1)  # (B, k, T, H, W, 3) -> (B*k, T, H, W, 3)
        if "mp4" in batch and "frame_index" in batch:
            clips = self.nvdec(batch["mp4"], batch["frame_index"], batch["keyframes"], device,
                               rotations=batch.get("rotation"), size=batch.get("resize"))  # (B, k, T, 3, H, W)
            return clips.flatten(0, 1).permute(0, 1, 3, 4, 2)  # -> (B*k, T, H, W, 3), a view
        raise KeyError(f"video batch has neither decoded `video` nor `mp4` + `frame_index`: {sorted(batch)}")

    def _clip_view(self, aug: Augment, batch: dict[str, Any], draws: dict[str, Tensor],
                   device: torch.device) -> Tensor:
        """One augmented view of every clip, (B*k, T, 3, h, w): float in [0, 1], or uint8 for a flip-only view."""
        cut = batch.get(f"video.{aug.view}")
        if cut is not None:  # the workers cut the crops (`crop_clips`); only flip and colour are left
            x = _to(cut, device).flatten(0, 1).permute(0, 1, 4, 2, 3)  # (B*k, T, h, w, 3) -> (B*k, T, 3, h, w)
            flipped = f"video.{aug.view}.flipped" in batch  # the worker drew and applied the flips
            return self._pixels(aug, x, draws, owned=x.data_ptr() != cut.data_ptr(), flipped=flipped)
        frames = self._frames(batch, device).permute(0, 1, 4, 2, 3)  # (B*k, T, H, W, 3) -> (B*k, T, 3, H, W)
        x = crop_batch(frames, draws["box"], aug.size)  # (B*k, T, 3, h, w) uint8
        return self._pixels(aug, x, draws, owned=True)

    def _pixels(self, aug: Augment, x: Tensor, draws: dict[str, Tensor], *, owned: bool,
                flipped: bool = False) -> Tensor:
        """`aug.apply` on crops: uint8 stays uint8 for a flip-only view (cast and normalise fused in `_tokens`),
        else float in [0, 1]. `owned`: x may be written in place (not the batch's own tensor)."""
        if x.dtype == torch.uint8:
            if aug.flip_only:
                needs_copy = not owned and not flipped and not x.is_cuda  # CPU flips write in place
                return aug.apply(x.clone() if needs_copy else x, draws, flipped=flipped)
            x = x.float().div_(255.0)
        elif not owned:
            x = x.clone()
        return aug.apply(x, draws, flipped=flipped)

    def _audio(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        wave = _to(batch["audio"], device)  # (B, N)
        out = self._common(batch, 1, device)
        if self.mode == "waveform":
            out["waveform"] = wave
            return out
        lengths = batch.get("audio_len")
        out["audio"] = self._spectrogram(wave, None if lengths is None else _to(lengths, device),
                                         self._visible(batch, "audio", device))
        return out

    def _spectrogram(self, wave: Tensor, lengths: Tensor | None, visible: Tensor | None) -> Tokens:
        if self.fbank is None:  # a video stage meeting a soundtrack: AudioMAE's defaults, built once
            self.fbank = Fbank()
        fbank = self.fbank = self.fbank.to(wave.device)
        feats = fbank(wave, lengths).unsqueeze(1)  # (B, T, F) -> (B, 1, T, F); Fbank already normalised
        return self._tokens(self.spec("audio"), feats, visible, normalize=False)

    def _image(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        out = self._common(batch, 1, device)
        spec = self.spec("image")
        tokens = [self._tokens(spec, self._view(aug, batch, self._draws(batch, aug.view, device), device),
                               self._visible(batch, aug.view, device)) for aug in self.views]
        self._place(out, "image", tokens)
        return out

    def _multimodal(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        aug = self.views[0]
        draws = self._draws(batch, aug.view, device)
        rgb = self._view(aug, batch, draws, device)
        out = self._common(batch, 1, device)
        image, depth, semseg = (self.spec(n) for n in ("image", "depth", "semseg"))
        out["image"] = self._tokens(image, rgb, None)
        size = tuple(rgb.shape[-2:])
        for name, spec in (("depth", depth), ("semseg", semseg)):
            if f"{name}.{aug.view}" in batch:
                maps = _to(batch[f"{name}.{aug.view}"], device).clone()  # (B, h, w), cut by the worker (same box)
            elif name in batch:
                # semseg at the spec's stride (MultiMAE: 56 x 56 for a 224 image), depth at the image's size
                small = tuple(s * spec.size[0] // image.size[0] for s in size) if name == "semseg" else size
                mode = "nearest" if name == "semseg" else "bilinear"
                boxes = batch[f"{PREFIX}{aug.view}.box"].flatten(0, 1).tolist()  # host draws: no device read
                maps = torch.stack([resized_crop(_to(m, device)[None], box, small, mode)[0]
                                    for m, box in zip(batch[name], boxes)])
            else:
                continue
            if f"image.{aug.view}.flipped" not in batch:  # else the worker flipped them with the image
                maps = colour.flip(maps, draws["flip"])  # the RGB view's flip, so maps stay registered
            if name == "semseg":
                out[name] = self._tokens(spec, maps.long(), None)
            else:
                out[name] = self._tokens(spec, maps.float().unsqueeze(1), None)  # (B, 1, h, w)
        return out

    # -- shared pieces --------------------------------------------------------------------------------------

    def _view(self, aug: Augment, batch: dict[str, Any], draws: dict[str, Tensor], device: torch.device) -> Tensor:
        """One augmented view (B, 3, h, w) from pre-cut crops, whole images or JPEG bytes.

        Float in [0, 1], except pre-cut uint8 crops of a flip-only view, which stay uint8 (see `_tokens`).
        """
        precut = batch.get(f"image.{aug.view}")
        if precut is not None:
            x = _to(precut, device)
            flipped = f"image.{aug.view}.flipped" in batch  # the worker drew and applied the flips
            return self._pixels(aug, x, draws, owned=x.data_ptr() != precut.data_ptr(), flipped=flipped)
        if "image" in batch:
            images = batch["image"]
            images = [_to(img, device) for img in images] if isinstance(images, list) else _to(images, device)
        elif "image_bytes" in batch:
            images = decode_jpeg_batch(batch["image_bytes"], device)  # one batched nvjpeg decode on CUDA
        else:
            raise KeyError(f"image batch has no `image.{aug.view}`, `image` or `image_bytes`: {sorted(batch)}")
        x = crop_batch(images, draws["box"], aug.size)  # (B, 3, h, w), uint8 for decoded images
        return self._pixels(aug, x if x.dtype == torch.uint8 else x.div_(255.0), draws, owned=True)

    def _tokens(self, spec: Modality, x: Tensor, visible: Tensor | None, normalize: bool = True) -> Tokens:
        """Normalised (unless `normalize` is False) and patchified x (B, C, *axes), with the drawn visible tokens.

        uint8 input (0..255) is patchified and cast in one copy, then normalised in place with one multiply-add
        per value (`Modality.normalize_patches`).
        """
        if x.dtype == torch.uint8 and normalize and not spec.categorical and spec.mean is not None:
            shape = _patched_shape(spec, x)
            out = _handover(shape, torch.float32, x.device)
            out = torch.empty(shape, dtype=torch.float32, device=x.device) if out is None else out
            tokens = spec.tokenize(x, out=out)  # one copy that permutes the bytes and casts them
            tokens = replace(tokens, patches=spec.normalize_patches(tokens.patches, out=tokens.patches))
        else:
            x = x.float() / 255.0 if x.dtype == torch.uint8 and not spec.categorical else x
            x = spec.normalize(x) if normalize else x
            tokens = spec.tokenize(x, out=_handover(_patched_shape(spec, x), x.dtype, x.device))
        if self.pin_dtype is not None:
            tokens = tokens.to(dtype=self.pin_dtype)
        return tokens if visible is None else replace(tokens, visible=visible)

    def _common(self, batch: dict[str, Any], repeat: int, device: torch.device) -> dict[str, Any]:
        keys = list(batch["__key__"])
        out: dict[str, Any] = {"key": [k for k in keys for _ in range(repeat)], "ids": batch_row_ids(batch, repeat)}
        if "cls" in batch and isinstance(batch["cls"], Tensor):
            out["label"] = _to(batch["cls"], device).repeat_interleave(repeat)
        return out

    def _place(self, out: dict[str, Any], name: str, tokens: list[Tokens]) -> None:
        if len(tokens) == 1:
            out[name] = tokens[0]
        else:
            out["views"] = tokens
