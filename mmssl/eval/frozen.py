"""Frozen features of labelled shards, for the k-NN and linear probes of any modality.

Each sample is read once (an evaluation pass: no shuffle, no dropped batch) and prepared deterministically for
the encoder's modality spec: images centre-cropped to a square and resized to the spec's size, video clips taken
from the middle of the video, audio from the start; the encoder's pooled feature ([CLS], or the mean token) is
kept with the sample's label.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from mmssl.models import TokenEncoder
from pipelines.augment import Augment, Crop, crop_images
from pipelines.audio import decode_audio
from pipelines.device import DeviceStage
from pipelines.images import decode_images
from pipelines.loader import StreamLoader
from pipelines.video import decode_clips

__all__ = ["eval_pipeline", "shard_features"]


def eval_pipeline(encoder: TokenEncoder, *, stride: int = 4) -> tuple[list[Any], DeviceStage]:
    """Worker stages and device stage that feed `encoder`'s modality without random augmentation."""
    spec = encoder.modality
    variant = {"name": spec.name, "patch": list(spec.patch), "size": list(spec.size)}
    if spec.name == "image":
        # scale (1, 1) with a square aspect: the largest centred square, resized to the spec's size
        crop = Crop(size=tuple(spec.size), scale=(1.0, 1.0), ratio=(1.0, 1.0), view="eval")
        stages = [decode_images(), crop_images(crops=[crop])]
        return stages, DeviceStage(mode="image", views=[Augment(crop=crop, flip=0.0)], modalities=[variant])
    if spec.name == "video":
        frames, height, width = spec.size
        stages = [decode_clips(num_frames=frames, stride=stride, clips=1, position="uniform", size=(height, width))]
        return stages, DeviceStage(mode="video", modalities=[variant])
    if spec.name == "audio":
        seconds = spec.size[0] / 100  # 10 ms fbank frames
        return [decode_audio(seconds=seconds, position="start")], DeviceStage(mode="audio", modalities=[variant])
    raise ValueError(f"no probe pipeline for {spec.name!r} encoders; probe image, video or audio encoders")


@torch.no_grad()
def shard_features(encoder: TokenEncoder, source: str, *, batch_size: int = 64, workers: int = 2,
                   device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """Pooled features (N, D) and labels (N,) of every labelled sample in `source`, each read once."""
    stages, device_stage = eval_pipeline(encoder)
    loader = StreamLoader(source, batch_size=batch_size, stages=stages, num_workers=workers, shuffle_window=0,
                          shuffle_shards=False, drop_last=False, rank=0, world_size=1)
    encoder = encoder.eval().to(device)
    feats, labels = [], []
    for batch in tqdm(loader, desc=f"features {source}", unit="batch", leave=False):
        if not batch["__size__"]:
            continue
        if "cls" not in batch:
            raise ValueError(f"{source}: samples have no label (.cls); probes need labelled shards")
        ready = device_stage(batch, device)
        feats.append(encoder(ready[encoder.modality.name]).pooled.float().cpu())
        labels.append(ready["label"].reshape(-1).cpu())
    if not feats:
        raise ValueError(f"{source}: no usable samples ({loader.stats.summary()})")
    return torch.cat(feats), torch.cat(labels)
