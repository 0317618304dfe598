"""Frame features for the linear speech probes (van den Oord et al., 2018, §3.1; CPC_audio
`cpc/eval/linear_separability.py`; Huang et al., 2022 for Audio-MAE).

REFERENCE.md §1.18. Every feature source is a `FrameFeatures`: waveforms (B, N) -> one feature per 10 ms frame
(B, N / 160, D), so the two probes read every source the same way:
- speaker identification: a linear classifier on one vector per clip, pooled over the frames holding real audio
  (a zero-padded short clip is read up to its end): CPC's LAST context vector (`SpeakerCriterion` takes
  `cFeature[:, -1]`: the causal context summarises the clip), the mean of a token encoder's features (Audio-MAE
  pools its tokens), the mean and standard deviation of MFCC frames (a single 25 ms frame may be a closure or a
  fricative with no voice in it, so one MFCC frame is a strawman baseline; utterance statistics are the classic one);
- phone classification: a linear classifier per 10 ms frame, with one label per frame from an alignment file
  (CPC's `converted_aligned_phones.txt` format: `utterance p_0 p_1 ...`, matched to the sample by the stem of
  its json `source`, else its key);
- CPC: contexts c_t (or latents z_t), one per 160 samples; MFCCs (`torchaudio.transforms.MFCC`, 25 ms windows every
  10 ms, so frame t covers the same audio as latent t) are the hand-made baseline; a token encoder on fbank
  patches (Audio-MAE: 16 x 16 over (frames, mel)) gives each frame the mean over frequency of the tokens in its
  patch row, so a frame's feature has the 160 ms resolution of the patches;
- each sample is read once from the start of the clip (no shuffle, every sample: `recipes.eval_data`); the probes
  themselves are in `mmssl.eval.logistic`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from mmssl.eval.logistic import probe_accuracy, train_probe  # re-exported: tests/methods/test_cpc_speech.py
from mmssl.models.cpc_audio import DOWNSAMPLING
from mmssl.models.encoder import TokenEncoder

__all__ = ["FrameFeatures", "POOLS", "cpc_frames", "mfcc_frames", "token_frames", "pool_frames", "read_alignments",
           "encode_labels", "train_probe", "probe_accuracy"]

POOLS = ("last", "mean", "mean+std")

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


def token_frames(encoder: TokenEncoder, fbank: nn.Module) -> FrameFeatures:
    """Frame features of a `TokenEncoder` on spectrogram patches (Audio-MAE).

    Args:
        encoder: an encoder of "audio" tokens whose patch is (frames, mel bins).
        fbank: waveforms (B, N) -> normalised log-mel frames (B, L, mel) with L >= N / 160 (`pipelines.fbank.Fbank`
            with the target length training used).
    """
    spec = encoder.modality
    rows = int(spec.patch[0])  # 10 ms frames per patch row

    @torch.no_grad()
    def frames(wave: Tensor) -> Tensor:
        count = wave.shape[1] // DOWNSAMPLING
        mel = fbank.to(wave.device)(wave.float()).unsqueeze(1)  # (B, L, F) -> (B, 1, L, F)
        if mel.shape[2] < count or mel.shape[2] % rows:
            raise ValueError(f"fbank gives {mel.shape[2]} frames for {count} 10 ms frames; its target length must "
                             f"be a multiple of the patch ({rows}) and cover the window")
        out = encoder(spec.tokenize(mel))
        (b, _, d), grid = out.tokens.shape, out.grid
        per_row = out.tokens.reshape(b, *grid, d).mean(dim=2)  # (B, Lt * Lf, D) -> (B, Lt, Lf, D) -> (B, Lt, D)
        return per_row.repeat_interleave(rows, dim=1)[:, :count].float()  # (B, Lt * rows, D) -> (B, T, D)

    return frames


def pool_frames(feats: Tensor, valid: Tensor, pool: str) -> Tensor:
    """One vector per clip from frame features (B, T, D) of which the first `valid` (B,) hold real audio.

    Args:
        feats: frame features.
        valid: frames with real audio per clip, in [1, T].
        pool: "last" (the last valid frame: CPC's causal context), "mean", or "mean+std" (2D wide).
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if pool == "last":
        return feats[torch.arange(feats.shape[0], device=feats.device), valid - 1]  # (B, D)
    mask = (torch.arange(feats.shape[1], device=feats.device)[None] < valid[:, None]).unsqueeze(-1)  # (B, T, 1)
    count = valid[:, None].to(feats.dtype)  # (B, 1)
    mean = (feats * mask).sum(dim=1) / count  # (B, D)
    if pool == "mean":
        return mean
    var = ((feats - mean[:, None]).pow(2) * mask).sum(dim=1) / count  # (B, D): over the valid frames only
    return torch.cat([mean, var.sqrt()], dim=1)  # (B, 2D)


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
