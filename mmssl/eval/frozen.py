"""Frozen features of labelled shards, for the k-NN and linear probes of any modality.

Each sample is read once (an evaluation pass: no shuffle, no dropped batch) and prepared deterministically as the
checkpoint's training prepared it (`mmssl.eval.inputs.EvalInputs`): images centre-cropped to a square and resized
to the training crop size, video clips of the training length and stride from the middle of the video, audio
windows of the training length from the start. Several feature sources (the checkpoint, its random twin, the raw
input) read the same batches in one pass. Rows are sorted by sample key, so the result does not depend on the
worker count or the order the workers deliver in.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn
from tqdm import tqdm

from mmssl.config import ConfigError, instantiate
from mmssl.eval.inputs import EvalInputs, eval_inputs
from mmssl.models.cpc_audio import DOWNSAMPLING, CPCAudioEncoder
from pipelines.augment import Augment, Crop, crop_images
from pipelines.audio import decode_audio
from pipelines.device import DeviceStage
from pipelines.images import decode_images
from pipelines.loader import StreamLoader
from pipelines.video import decode_clips

__all__ = ["Extractor", "eval_pipeline", "pooled_extractor", "labelled_features", "shard_features"]

# (collated batch, device-stage output, inputs) -> features (B, D)
Extractor = Callable[[Mapping[str, Any], Mapping[str, Any], EvalInputs], Tensor]


def eval_pipeline(inputs: EvalInputs) -> tuple[list[Any], DeviceStage]:
    """Worker stages and device stage that feed `inputs` without random augmentation."""
    spec = inputs.spec
    variant = {"name": spec.name, "patch": list(spec.patch), "size": list(spec.size)}
    if inputs.kind == "image":
        # scale (1, 1) with a square aspect: the largest centred square, resized to the training size
        crop = Crop(size=tuple(spec.size), scale=(1.0, 1.0), ratio=(1.0, 1.0), view="eval")
        stages = [decode_images(), crop_images(crops=[crop])]
        return stages, DeviceStage(mode="image", views=[Augment(crop=crop, flip=0.0)], modalities=[variant])
    if inputs.kind == "video":
        frames, height, width = spec.size
        stages = [decode_clips(num_frames=frames, stride=inputs.clip_stride, clips=1, position="uniform",
                               size=(height, width))]
        return stages, DeviceStage(mode="video", modalities=[variant])
    if inputs.kind == "audio":
        fbank = instantiate(dict(inputs.fbank), where="data.device.fbank") if inputs.fbank else None
        return ([decode_audio(samples=inputs.samples, position="start")],
                DeviceStage(mode="audio", fbank=fbank, modalities=[variant]))
    return [decode_audio(samples=inputs.samples, position="start")], DeviceStage(mode="waveform")


def _valid_frames(batch: Mapping[str, Any], total: int, device: torch.device) -> Tensor:
    """(B, T) True where a CPC frame holds real audio (a short clip is zero-padded at its end)."""
    lengths = batch["audio_len"].to(device).reshape(-1)  # (B,)
    count = (lengths // DOWNSAMPLING).clamp(1, total)
    return torch.arange(total, device=device)[None] < count[:, None]


def pooled_extractor(encoder: nn.Module) -> Extractor:
    """The pooled feature (B, D) of an encoder: a `TokenEncoder`'s [CLS] (or mean token), a CNN's mean over its
    feature map, CPC's context vectors c_t averaged over the clip's real frames."""
    if isinstance(encoder, CPCAudioEncoder):
        def cpc(batch: Mapping[str, Any], ready: Mapping[str, Any], inputs: EvalInputs) -> Tensor:
            c = encoder(ready["waveform"]).c  # (B, T, H)
            valid = _valid_frames(batch, c.shape[1], c.device).unsqueeze(-1).to(c.dtype)  # (B, T, 1)
            return (c * valid).sum(1) / valid.sum(1)
        return cpc

    def pooled(batch: Mapping[str, Any], ready: Mapping[str, Any], inputs: EvalInputs) -> Tensor:
        out = encoder(ready[inputs.spec.name])
        if hasattr(out, "pooled"):  # TokenEncoder and CNNEncoder return `Encoded`
            return out.pooled
        if isinstance(out, Tensor) and out.dim() > 2:
            return out.flatten(2).mean(-1)  # (B, D, *grid) -> (B, D): dense encoders, averaged over positions
        if isinstance(out, Tensor) and out.dim() == 2:
            return out
        raise ConfigError(f"{type(encoder).__name__} returns {type(out).__name__}, not a pooled or dense feature")
    return pooled


@torch.no_grad()
def labelled_features(source: str, extractors: Mapping[str, Extractor], inputs: EvalInputs, *,
                      batch_size: int = 64, workers: int = 2,
                      device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], Tensor]:
    """Features (N, D) per extractor name and labels (N,) of every labelled sample in `source`, each read once.

    Args:
        source: labelled shards (folder, index.json or pattern).
        extractors: name -> extractor; encoders inside them must already be on `device` and in eval mode.
        inputs: how samples become inputs (from `mmssl.eval.inputs.eval_inputs`).
        batch_size: samples per batch.
        workers: loader worker processes.
        device: where the device stage and the encoders run.
    """
    stages, device_stage = eval_pipeline(inputs)
    loader = StreamLoader(source, batch_size=batch_size, stages=stages, num_workers=workers, shuffle_window=0,
                          shuffle_shards=False, drop_last=False, rank=0, world_size=1)
    feats: dict[str, list[Tensor]] = {name: [] for name in extractors}
    labels, keys = [], []
    for batch in tqdm(loader, desc=f"features {source}", unit="batch", leave=False):
        if not batch["__size__"]:
            continue
        if "cls" not in batch:
            raise ValueError(f"{source}: samples have no label (.cls); probes need labelled shards")
        ready = device_stage(batch, device)
        for name, extract in extractors.items():
            feats[name].append(extract(batch, ready, inputs).float().cpu())
        labels.append(ready["label"].reshape(-1).cpu())
        keys += [str(k) for k in batch["__key__"]]
    if not labels:
        raise ValueError(f"{source}: no usable samples ({loader.stats.summary()})")
    order = torch.tensor(sorted(range(len(keys)), key=keys.__getitem__))  # a stable sort: duplicates keep order
    return {name: torch.cat(f)[order] for name, f in feats.items()}, torch.cat(labels)[order]


def shard_features(encoder: nn.Module, source: str, *, inputs: EvalInputs | None = None, batch_size: int = 64,
                   workers: int = 2, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """Pooled features (N, D) and labels (N,) of one encoder; `inputs` default to its modality spec's size."""
    inputs = inputs or eval_inputs(encoder, None)
    encoder = encoder.eval().to(device)
    feats, labels = labelled_features(source, {"encoder": pooled_extractor(encoder)}, inputs,
                                      batch_size=batch_size, workers=workers, device=device)
    return feats["encoder"], labels
