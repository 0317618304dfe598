"""Evaluation data: labelled shards read once, in order, and turned into the inputs a frozen encoder was trained on.

Each sample is read once (an evaluation pass: no shuffle, no dropped batch) and prepared deterministically as the
checkpoint's training prepared it (`mmssl.eval.inputs.EvalInputs`): images centre-cropped to a square and resized
to the training crop size, video clips of the training length and stride from the middle of the video, audio
windows of the training length from the start. Several feature sources (the checkpoint, its random twin, the raw
input) read the same batches in one pass. Rows are sorted by sample key, so the result does not depend on the
worker count or the order the workers deliver in. The speech probes read clips the same way, with the speaker
(json `speaker`, else `.cls`) or the utterance (for a phone alignment) of each.

These are recipes: they join the library (`mmssl.eval`) and the data pipelines, which the library never imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn
from tqdm import tqdm

from mmssl.config import instantiate
from mmssl.eval.features import Extractor, pooled_extractor, real_frames
from mmssl.eval.inputs import EvalInputs, eval_inputs
from mmssl.eval.speech import FrameFeatures, pool_frames
from mmssl.models.cpc_audio import DOWNSAMPLING
from pipelines.augment import Augment, Crop, crop_images
from pipelines.audio import decode_audio
from pipelines.device import DeviceStage
from pipelines.images import decode_images
from pipelines.loader import StreamLoader
from pipelines.video import decode_clips

__all__ = ["eval_pipeline", "labelled_features", "shard_features", "speaker_features", "phone_features"]


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


def _batches(source: str, *, samples: int, batch_size: int, workers: int) -> Iterator[dict]:
    """Batches of every sample of `source` once, each cut from the start of the clip."""
    loader = StreamLoader(source, batch_size=batch_size, stages=[decode_audio(samples=samples, position="start")],
                          num_workers=workers, shuffle_window=0, shuffle_shards=False, drop_last=False, rank=0,
                          world_size=1)
    for batch in tqdm(loader, desc=f"audio {source}", unit="batch", leave=False):
        if batch["__size__"]:
            yield batch


def _speaker(batch: dict, i: int) -> str | None:
    meta = batch.get("json")
    value = meta[i].get("speaker") if isinstance(meta, list) and isinstance(meta[i], dict) else None
    if value in (None, "") and "cls" in batch:
        value = batch["cls"][i]
    return None if value in (None, "") else str(int(value) if isinstance(value, Tensor) else value)


def _utterance(batch: dict, i: int) -> str:
    meta = batch.get("json")
    if isinstance(meta, list) and isinstance(meta[i], dict) and meta[i].get("source"):
        return Path(str(meta[i]["source"])).name.split(".", 1)[0]
    return batch["__key__"][i]


def speaker_features(sources: Mapping[str, tuple[FrameFeatures, str]], source: str, *, samples: int = 20480,
                     batch_size: int = 32, workers: int = 0,
                     device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], list[str]]:
    """Pooled clip features of several feature sources from one pass over `source`.

    Args:
        sources: name -> (frame features, pool: see `pool_frames`).
        source: shards (folder, index.json or pattern).
        samples: the window read from the start of each clip.
        batch_size: clips per batch.
        workers: loader workers.
        device: where the feature sources run.

    Returns:
        name -> features (N, D_name) on the CPU, and the speaker of each of the N samples that have one.
    """
    feats: dict[str, list[Tensor]] = {name: [] for name in sources}
    speakers: list[str] = []
    for batch in _batches(source, samples=samples, batch_size=batch_size, workers=workers):
        wave = batch["audio"].to(device)
        rows = [i for i in range(wave.shape[0]) if _speaker(batch, i) is not None]
        speakers.extend(_speaker(batch, i) for i in rows)
        for name, (frames, pool) in sources.items():
            out = frames(wave)  # (B, T, D)
            valid = real_frames(batch["audio_len"].to(out.device), out.shape[1])
            feats[name].append(pool_frames(out, valid, pool)[rows].cpu())  # (B', D)
    if not speakers:
        raise ValueError(f"{source}: no sample has a speaker (json 'speaker' or .cls)")
    return {name: torch.cat(parts) for name, parts in feats.items()}, speakers


def phone_features(sources: Mapping[str, FrameFeatures], source: str, alignments: dict[str, list[str]], *,
                   samples: int = 20480, batch_size: int = 32, workers: int = 0,
                   device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], list[str]]:
    """Frame features of several feature sources and the phone label of every aligned frame, from one pass.

    Args:
        sources: name -> frame features.
        source: shards (folder, index.json or pattern).
        alignments: utterance -> one phone per 10 ms frame (`read_alignments`).
        samples: the window read from the start of each clip.
        batch_size: clips per batch.
        workers: loader workers.
        device: where the feature sources run.

    Returns:
        name -> features (F, D_name) on the CPU, and the F phone labels.
    """
    feats: dict[str, list[Tensor]] = {name: [] for name in sources}
    phones: list[str] = []
    for batch in _batches(source, samples=samples, batch_size=batch_size, workers=workers):
        wave = batch["audio"].to(device)
        valid = real_frames(batch["audio_len"], wave.shape[1] // DOWNSAMPLING)
        spans = []  # (clip, frames kept) of the aligned clips
        for i in range(wave.shape[0]):
            labels = alignments.get(_utterance(batch, i))
            if labels is not None:
                n = min(int(valid[i]), len(labels))
                spans.append((i, n))
                phones.extend(labels[:n])
        if not spans:
            continue
        for name, frames in sources.items():
            out = frames(wave).cpu()  # (B, T, D)
            feats[name].extend(out[i, :n] for i, n in spans)
    if not phones:
        raise ValueError(f"{source}: no sample matches an utterance of the alignment file")
    return {name: torch.cat(parts) for name, parts in feats.items()}, phones
