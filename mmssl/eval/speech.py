"""Linear speech probes of CPC features (van den Oord et al., 2018, §3.1; CPC_audio `cpc/eval/linear_separability.py`).

REFERENCE.md §1.18:
- speaker identification: a linear classifier on the LAST context vector of a window (`SpeakerCriterion` takes
  `cFeature[:, -1]`); here the last frame holding real audio, so a zero-padded short clip is read at its end;
- phone classification: a linear classifier per 10 ms frame, with one label per frame from an alignment file
  (CPC's `converted_aligned_phones.txt` format: `utterance p_0 p_1 ...`, matched to the sample by the stem of
  its json `source`, else its key);
- the same probes on MFCCs (`torchaudio.transforms.MFCC`, 25 ms windows every 10 ms, so frame t covers the
  same audio as latent t) are the hand-made baseline;
- each sample is read once from the start of the clip (no shuffle, every sample); the probe is trained with
  Adam (lr 2e-4, 10 epochs in the paper) on frozen features, standardised with the training set's statistics
  so that MFCC and learned features see the same optimiser.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from mmssl.models.cpc_audio import DOWNSAMPLING
from pipelines.audio import decode_audio
from pipelines.loader import StreamLoader

__all__ = ["FrameFeatures", "cpc_frames", "mfcc_frames", "read_alignments", "speaker_features", "phone_features",
           "encode_labels", "train_probe", "probe_accuracy"]

FrameFeatures = Callable[[Tensor], Tensor]  # waveforms (B, N) -> per-10-ms features (B, N / 160, D)


def cpc_frames(encoder: nn.Module, *, level: str = "c") -> FrameFeatures:
    """Frame features of a `CPCAudioEncoder`: contexts c_t ("c", the paper's probes) or latents z_t ("z")."""
    if level not in ("c", "z"):
        raise ValueError(f"level must be 'c' or 'z', got {level!r}")

    @torch.no_grad()
    def frames(wave: Tensor) -> Tensor:
        z, c = encoder(wave)
        return (c if level == "c" else z).float()

    return frames


def mfcc_frames(*, n_mfcc: int = 13, n_mels: int = 40, rate: int = 16000) -> FrameFeatures:
    """MFCCs of 25 ms windows every 10 ms, trimmed to N / 160 frames so frame t lines up with CPC's latent t."""
    import torchaudio

    mfcc = torchaudio.transforms.MFCC(sample_rate=rate, n_mfcc=n_mfcc,
                                      melkwargs={"n_fft": 400, "hop_length": DOWNSAMPLING, "n_mels": n_mels})

    @torch.no_grad()
    def frames(wave: Tensor) -> Tensor:
        out = mfcc.to(wave.device)(wave.float())  # (B, n_mfcc, N / 160 + 1): centred windows
        return out[..., :wave.shape[1] // DOWNSAMPLING].transpose(1, 2)  # (B, D, T) -> (B, T, D)

    return frames


def read_alignments(path: str | Path) -> dict[str, list[str]]:
    """Frame labels per utterance from a `utterance p_0 p_1 ...` text file (one 10 ms frame per label)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if parts:
            out[parts[0]] = parts[1:]
    if not out:
        raise ValueError(f"{path}: no alignments")
    return out


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


def _valid_frames(lengths: Tensor, total: int) -> Tensor:
    return (lengths // DOWNSAMPLING).clamp(1, total)  # frames holding real audio (at least one)


def speaker_features(frames: FrameFeatures, source: str, *, samples: int = 20480, batch_size: int = 32,
                     workers: int = 0, device: str | torch.device = "cpu") -> tuple[Tensor, list[str]]:
    """The last valid frame's feature (N, D) and the speaker id of every sample with one."""
    feats, speakers = [], []
    for batch in _batches(source, samples=samples, batch_size=batch_size, workers=workers):
        out = frames(batch["audio"].to(device))  # (B, T, D)
        last = _valid_frames(batch["audio_len"].to(out.device), out.shape[1]) - 1
        picked = out[torch.arange(out.shape[0], device=out.device), last]  # (B, D)
        for i in range(out.shape[0]):
            speaker = _speaker(batch, i)
            if speaker is not None:
                feats.append(picked[i].cpu())
                speakers.append(speaker)
    if not feats:
        raise ValueError(f"{source}: no sample has a speaker (json 'speaker' or .cls)")
    return torch.stack(feats), speakers


def phone_features(frames: FrameFeatures, source: str, alignments: dict[str, list[str]], *, samples: int = 20480,
                   batch_size: int = 32, workers: int = 0,
                   device: str | torch.device = "cpu") -> tuple[Tensor, list[str]]:
    """Features (F, D) and phone labels of every aligned frame of the samples that have an alignment."""
    feats, phones = [], []
    for batch in _batches(source, samples=samples, batch_size=batch_size, workers=workers):
        out = frames(batch["audio"].to(device)).cpu()  # (B, T, D)
        valid = _valid_frames(batch["audio_len"], out.shape[1])
        for i in range(out.shape[0]):
            labels = alignments.get(_utterance(batch, i))
            if labels is None:
                continue
            n = min(int(valid[i]), len(labels))
            feats.append(out[i, :n])
            phones.extend(labels[:n])
    if not feats:
        raise ValueError(f"{source}: no sample matches an utterance of the alignment file")
    return torch.cat(feats), phones


def encode_labels(train: list[str], val: list[str]) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    """Integer labels from the training set's sorted classes; val rows of unseen classes are dropped.

    Returns:
        train labels (N,), val labels (M',), the kept val rows (M,) as a bool mask, and the class names.
    """
    classes = sorted(set(train))
    index = {c: i for i, c in enumerate(classes)}
    keep = torch.tensor([v in index for v in val], dtype=torch.bool)
    return (torch.tensor([index[t] for t in train]), torch.tensor([index[v] for v in val if v in index]), keep,
            classes)


class _Probe(nn.Module):
    """Standardise with fixed training statistics, then one linear layer."""

    def __init__(self, mean: Tensor, std: Tensor, classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(mean.numel(), classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear((x - self.mean) / self.std)


def train_probe(feats: Tensor, labels: Tensor, *, num_classes: int, epochs: int = 10, lr: float = 2e-4,
                batch_size: int = 256, seed: int = 0) -> nn.Module:
    """A linear classifier on frozen features, trained with Adam on seeded mini-batches (CPC_audio's probe)."""
    feats = feats.float()
    mean, std = feats.mean(dim=0), feats.std(dim=0).clamp_min(1e-6)
    probe = _Probe(mean, std, num_classes)
    opt = torch.optim.Adam(probe.linear.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(labels)
    with torch.enable_grad():  # callers often hold features made under no_grad
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                loss = F.cross_entropy(probe(feats[idx]), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return probe.eval()


@torch.no_grad()
def probe_accuracy(probe: nn.Module, feats: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in percent."""
    if len(labels) == 0:
        return math.nan
    return 100.0 * (probe(feats.float()).argmax(dim=1) == labels).float().mean().item()
