"""What shaped an encoder's input in training, read back from its checkpoint, so evaluation feeds it the same way.

A checkpoint's "config" is the run's resolved config. The evaluation input follows it:
- images: the training crops' size (`data.device.views[*].crop.size`, the largest view: DINO's global crops),
  else the crops cut in the workers, else the modality variant's size;
- video: the `decode_clips` stage's clip length and stride, and the crop (or decoded) frame size;
- audio spectrograms: the `decode_audio` window and the device stage's `Fbank` (target length, mel bins,
  normalisation statistics);
- CPC waveforms: the `decode_audio` window in samples.
The patch and the per-channel normalisation come with the encoder's modality spec. An explicit `modality.*`
(or `encoder.modality=`) override wins; when it disagrees with training, `EvalInputs.describe` says both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from torch import nn

from mmssl.config import ConfigError, parse_value
from mmssl.modalities import Modality, get_modality
from mmssl.models.cpc_audio import DOWNSAMPLING, CPCAudioEncoder

__all__ = ["EvalInputs", "eval_inputs", "split_modality_overrides"]

RATE = 16000
FBANK_SHIFT = 160  # samples per 10 ms fbank frame at 16 kHz


@dataclass(frozen=True)
class EvalInputs:
    """How evaluation samples become the encoder's input.

    Attributes:
        kind: "image", "video", "audio" (fbank tokens) or "waveform" (raw windows, CPC).
        spec: the modality variant samples are tokenised with; its size is the evaluation size.
        origin: where the size came from, e.g. "the checkpoint's training crops".
        trained: the size the checkpoint trained at, None when unknown (no checkpoint, or no data config).
        clip_stride: frames between a clip's frames (video).
        samples: the audio window in samples (audio, waveform).
        fbank: the checkpoint's `Fbank` component mapping (audio), None for the defaults.
    """

    kind: str
    spec: Modality
    origin: str
    trained: tuple[int, ...] | None = None
    clip_stride: int = 4
    samples: int | None = None
    fbank: Mapping[str, Any] | None = None

    @property
    def size(self) -> tuple[int, ...]:
        return tuple(self.spec.size)

    def describe(self) -> str:
        """One or two lines: what is used and where it came from, and the training size when it differs."""
        if self.kind == "video":
            what = f"{_fmt(self.size)} clips at stride {self.clip_stride}"
        elif self.kind == "audio":
            what = f"{self.samples / RATE:g} s windows ({_fmt(self.size)} fbank)"
        elif self.kind == "waveform":
            what = f"{self.size[0]}-sample windows ({self.size[0] / RATE:g} s)"
        else:
            what = _fmt(self.size)
        line = f"input {what} from {self.origin}"
        if self.trained is not None and tuple(self.trained) != self.size:
            line += f"\ntrained at {_fmt(self.trained)}, evaluating at {_fmt(self.size)}"
        return line


def _fmt(size: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in size)


def _pair(size: Any) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))


def _component(node: Any, name: str) -> bool:
    return isinstance(node, Mapping) and str(node.get("_component_", "")).rsplit(".", 1)[-1] == name


def _stages(cfg: Mapping) -> list[Mapping]:
    stages = (((cfg.get("data") or {}).get("train") or {}).get("stages")) or []
    return [s for s in stages if isinstance(s, Mapping)]


def _device(cfg: Mapping) -> Mapping:
    return (cfg.get("data") or {}).get("device") or {}


def _variant_size(cfg: Mapping, name: str) -> tuple[int, ...] | None:
    """The size of a modality variant the run tokenised with (device stage first, then the encoder's)."""
    candidates = list(_device(cfg).get("modalities") or []) + [((cfg.get("method") or {}).get("encoder") or {})
                                                              .get("modality")]
    for node in candidates:
        if isinstance(node, Mapping) and node.get("name") == name and node.get("size") is not None:
            return tuple(int(s) for s in node["size"])
    return None


def _crop_sizes(cfg: Mapping) -> list[tuple[int, int]]:
    """Spatial sizes of the device views' crops, else of the crops cut in the workers."""
    views = [v for v in (_device(cfg).get("views") or []) if isinstance(v, Mapping)]
    sizes = [_pair(v["crop"]["size"]) for v in views if isinstance(v.get("crop"), Mapping) and "size" in v["crop"]]
    if not sizes:
        for stage in _stages(cfg):
            if _component(stage, "crop_images"):
                sizes += [_pair(c["size"]) for c in stage.get("crops") or [] if isinstance(c, Mapping) and "size" in c]
    return sizes


def _trained_image(cfg: Mapping) -> tuple[tuple[int, int] | None, str]:
    sizes = _crop_sizes(cfg)
    if sizes:
        return max(sizes, key=lambda s: s[0] * s[1]), "the checkpoint's training crops"
    size = _variant_size(cfg, "image")
    return (tuple(size) if size else None), "the checkpoint's modality variant"


def _trained_video(cfg: Mapping) -> tuple[tuple[int, int, int] | None, int | None, str]:
    clip = next((s for s in _stages(cfg) if _component(s, "decode_clips")), None)
    if clip is None:
        size = _variant_size(cfg, "video")
        return (tuple(size) if size else None), None, "the checkpoint's modality variant"
    crops = _crop_sizes(cfg)
    spatial = max(crops, key=lambda s: s[0] * s[1]) if crops else (_pair(clip["size"]) if clip.get("size") else None)
    if spatial is None:
        return None, int(clip.get("stride", 4)), "the checkpoint's decode_clips stage"
    frames = int(clip.get("num_frames", 16))
    return (frames, *spatial), int(clip.get("stride", 4)), "the checkpoint's decode_clips stage and crops"


def _trained_samples(cfg: Mapping) -> int | None:
    stage = next((s for s in _stages(cfg) if _component(s, "decode_audio")), None)
    if stage is None:
        return None
    if stage.get("samples") is not None:
        return int(stage["samples"])
    return int(round(float(stage.get("seconds", 10.0)) * RATE))


def split_modality_overrides(items: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """`modality.<field>=value` items as {field: value}, and the other items unchanged."""
    fields, rest = {}, []
    for item in items:
        key, _, value = item.partition("=")
        if key.startswith("modality."):
            fields[key[len("modality."):]] = parse_value(value)
        else:
            rest.append(item)
    return fields, rest


def _with(spec: Modality, fields: Mapping[str, Any], where: str) -> Modality:
    try:
        return get_modality({"name": spec.name, **{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)
                                                   if f.name != "name"}, **fields})
    except (KeyError, ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from None


def eval_inputs(encoder: nn.Module, config: Mapping | None, *, modality: Mapping[str, Any] | None = None,
                encoder_modality: bool = False) -> EvalInputs:
    """The evaluation input of `encoder`, read from its checkpoint's run config.

    Args:
        encoder: the built encoder (its modality spec gives the patch and normalisation).
        config: the checkpoint's resolved run config, or None (a random init without a checkpoint).
        modality: explicit `modality.*` fields (e.g. {"size": [64, 64]}); they win over the checkpoint.
        encoder_modality: the user set `encoder.modality=`: its size is explicit too.
    """
    spec = getattr(encoder, "modality", None)
    if not isinstance(spec, Modality):
        raise ConfigError(f"{type(encoder).__name__} has no modality spec: the probes cannot tell what it reads")
    cfg = config or {}
    kind = "waveform" if isinstance(encoder, CPCAudioEncoder) else spec.name
    if kind not in ("image", "video", "audio", "waveform"):
        raise ConfigError(f"k-NN and linear probes read image, video or audio encoders, not {spec.name!r} ones")
    stride, samples, fbank, trained, origin = 4, None, None, None, "the encoder's modality"
    if kind == "image":
        trained, where = _trained_image(cfg)
    elif kind == "video":
        trained, clip_stride, where = _trained_video(cfg)
        stride = clip_stride or stride
    elif kind == "audio":
        node = _device(cfg).get("fbank")
        fbank = dict(node) if isinstance(node, Mapping) else None
        samples = _trained_samples(cfg)
        length = (fbank or {}).get("target_length", 1024)
        if length is None and samples is not None:  # no padding: Kaldi's frame count of the window
            length = 1 + (samples - 400) // FBANK_SHIFT
        bins = int((fbank or {}).get("num_mel_bins", spec.size[1]))
        trained = (int(length), bins) if config is not None and (fbank or samples) else None
        where = "the checkpoint's decode_audio window and fbank"
    else:
        samples = _trained_samples(cfg)
        trained = (samples,) if samples else None
        where = "the checkpoint's decode_audio window"
    if config is None:
        trained = None
    size = tuple(spec.size)
    if modality:
        spec, origin = _with(spec, modality, "modality override"), "modality.* overrides"
        own = encoder.modality
        if spec.patch != own.patch or spec.channels != own.channels:
            raise ConfigError(f"modality.* overrides change the input only; the encoder's patch {own.patch} and "
                              f"{own.channels} channels stay (set encoder.modality= to build another encoder)")
    elif encoder_modality:
        origin = "encoder.modality"
    elif trained is not None:
        spec, origin = _with(spec, {"size": list(trained)}, f"the checkpoint's training size {_fmt(trained)}"), where
    size = tuple(spec.size)
    if kind == "audio":
        if samples is None or (trained is not None and size[0] != trained[0]):
            samples = int(round(size[0] / 100 * RATE))  # 10 ms fbank frames
        if fbank is not None and fbank.get("target_length") is not None:
            fbank = {**fbank, "target_length": size[0]}
        elif fbank is None:
            fbank = {"_component_": "pipelines.fbank.Fbank", "target_length": size[0]}
    if kind == "waveform":
        samples = size[0]
        if samples % DOWNSAMPLING:
            raise ConfigError(f"a CPC window must be a multiple of {DOWNSAMPLING} samples, got {samples}")
    return EvalInputs(kind=kind, spec=spec, origin=origin, trained=trained, clip_stride=stride, samples=samples,
                      fbank=fbank)
