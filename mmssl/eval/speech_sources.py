"""The feature sources a speech probe compares, built from a checkpoint: its encoder, the same architecture at a
seeded random init, and MFCCs; with the input settings that shaped training, read from the checkpoint's config.

A checkpoint's config (`ckpt["config"]`, the resolved run config) says how training cut and featurised audio:
the window of its `pipelines.audio.decode_audio` stage (`data.train.stages`: `samples`, or `seconds` at `rate`)
and, for a token encoder, the fbank of its device stage (`data.device.fbank`: mel bins, target length, statistics).
Those are the defaults here (read by `mmssl.eval.inputs`, as for the k-NN and linear probes), so Audio-MAE trained
on 2.56 s windows is probed on 2.56 s windows, not on the 10.24 s its modality spec describes. Every row reads the
same window of the same clips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from mmssl.config import ConfigError, instantiate
from mmssl.eval.encoders import load_encoder, read_checkpoint
from mmssl.eval.inputs import eval_inputs
from mmssl.eval.speech import FrameFeatures, cpc_frames, mfcc_frames, token_frames
from mmssl.models.cpc_audio import DOWNSAMPLING, CPCAudioEncoder
from mmssl.models.encoder import TokenEncoder

__all__ = ["SpeechInput", "FeatureSource", "DEFAULT_ENCODER", "trained_input", "with_window", "check_audio_encoder",
           "encoder_sources", "mfcc_source"]

DEFAULT_ENCODER = {"_component_": "mmssl.models.cpc_audio.CPCAudioEncoder"}
RATE = 16000  # every probe frame is 160 samples = 10 ms at this rate
FBANK = "pipelines.fbank.Fbank"


@dataclass(frozen=True)
class SpeechInput:
    """What the encoder reads: `samples` from the start of each clip and, for a token encoder, the `fbank`
    keyword arguments (None for waveform encoders); `origin` says where each came from."""

    samples: int
    fbank: dict[str, Any] | None = None
    origin: str = ""

    def describe(self) -> str:
        """One line, e.g. "40960-sample windows (2.56 s) from the start of each clip, fbank ... (from ...)"."""
        text = f"{self.samples}-sample windows ({self.samples / RATE:.2f} s) from the start of each clip"
        if self.fbank is not None:
            text += ", fbank " + " ".join(f"{k}={v}" for k, v in sorted(self.fbank.items()) if k != "_component_")
        return text + (f" ({self.origin})" if self.origin else "")


@dataclass(frozen=True)
class FeatureSource:
    """One row of the comparison: its `name`, `what` it is, its frame features and its clip pooling (the speaker
    probe's; see `mmssl.eval.speech.pool_frames`)."""

    name: str
    what: str
    frames: FrameFeatures = field(repr=False)
    pool: str


def trained_input(config: Mapping | None, encoder: nn.Module) -> SpeechInput:
    """The window and fbank training used (`config` is a checkpoint's run config, None without one), else those
    of the encoder's modality; read by `mmssl.eval.inputs.eval_inputs`, as the k-NN and linear probes read them.

    Raises:
        ConfigError: when training read audio at another rate than the probes' 16 kHz.
    """
    stage = next((s for s in (((config or {}).get("data") or {}).get("train") or {}).get("stages") or ()
                  if isinstance(s, Mapping) and str(s.get("_component_", "")).endswith("decode_audio")), None)
    if stage is not None and int(stage.get("rate", RATE)) != RATE:
        raise ConfigError(f"the checkpoint's data.train.stages decodes audio at {stage['rate']} Hz; the speech probes "
                          f"read {RATE} Hz")
    inputs = eval_inputs(encoder, config)
    fbank = None
    if inputs.kind == "audio":
        fbank = {k: v for k, v in dict(inputs.fbank or {}).items() if k != "_component_"}
        fbank["target_length"] = int(inputs.size[0])
    return SpeechInput(int(inputs.samples), fbank, inputs.origin)


def with_window(trained: SpeechInput, samples: int | None, patch_rows: int = 1, *,
                was: str = "trained on") -> tuple[SpeechInput, str | None]:
    """`trained` with another window (None keeps it), and a line saying what changed (None when nothing did).

    A token encoder's fbank target length follows the window, rounded up to whole patch rows; `was` introduces
    the window replaced ("trained on", or "the encoder's modality says" when there is no checkpoint).
    """
    if samples is None or samples == trained.samples:
        return trained, None
    fbank = trained.fbank
    if fbank is not None:
        fbank = {**fbank, "target_length": math.ceil(samples / DOWNSAMPLING / patch_rows) * patch_rows}
    note = f"{was} {trained.samples}-sample windows; using {samples} (--samples)"
    return SpeechInput(samples, fbank, "--samples"), note


def _describe(encoder: nn.Module, level: str) -> str:
    if isinstance(encoder, CPCAudioEncoder):
        return f"CPCAudioEncoder {encoder.dim}/{encoder.context_dim} {encoder.context_kind}, {level}_t"
    return f"TokenEncoder {encoder.name} depth {encoder.depth} dim {encoder.dim}, tokens"


def _frames(encoder: nn.Module, speech: SpeechInput, level: str, device: torch.device) -> tuple[FrameFeatures, str]:
    encoder = encoder.eval().to(device)
    if isinstance(encoder, CPCAudioEncoder):
        return cpc_frames(encoder, level=level), "last"  # the causal context at the clip's end (the paper)
    fbank = instantiate({"_component_": FBANK, **speech.fbank}, where="data.device.fbank")
    return token_frames(encoder, fbank), "mean"


def check_audio_encoder(encoder: nn.Module, where: str, config: Mapping | None = None) -> None:
    """Raises ConfigError (one line naming the modality the encoder holds) unless it is a speech encoder."""
    if isinstance(encoder, CPCAudioEncoder):
        return
    modality = getattr(getattr(encoder, "modality", None), "name", None)
    if isinstance(encoder, TokenEncoder) and modality == "audio" and len(encoder.modality.patch) == 2:
        return
    if modality is None and isinstance(config, Mapping):
        modality = (config.get("data") or {}).get("device", {}).get("mode")
    holds = f"an {modality} encoder" if modality in ("image", "audio") else \
        f"a {modality} encoder" if modality else "an encoder of no audio modality"
    raise ConfigError(f"{where} holds {holds} ({type(encoder).__name__}); the speech probes read CPC speech "
                      "(CPCAudioEncoder) or Audio-MAE (a TokenEncoder on audio) encoders")


def encoder_sources(checkpoint: str | Path | None, *, overrides: Sequence[str] = (), level: str | None = None,
                    samples: int | None = None, seed: int = 0,
                    device: torch.device = torch.device("cpu")) -> tuple[list[FeatureSource], SpeechInput, list[str]]:
    """The "checkpoint" and "random init" rows (only the latter without a checkpoint: CPC's default encoder).

    Args:
        checkpoint: a pretraining checkpoint, or None.
        overrides: `key=value` changes to the encoder config, applied to both encoders.
        level: CPC's contexts "c" (None: the paper's probes) or latents "z"; a token encoder has one level.
        samples: a window other than the trained one (None: the trained one).
        seed: the random init's seed.
        device: where the encoders run.

    Returns:
        the rows, the input they read, and lines to print about the input.
    """
    if checkpoint is None:
        twin = load_encoder(None, DEFAULT_ENCODER, overrides=overrides, seed=seed)
        check_audio_encoder(twin, "the encoder config")
        trained_in = trained_input(None, twin)
        trained = None
    else:
        config = read_checkpoint(checkpoint).get("config")
        config = config if isinstance(config, Mapping) else None
        trained = load_encoder(checkpoint, overrides=overrides)
        check_audio_encoder(trained, str(checkpoint), config)
        twin = load_encoder(checkpoint, overrides=overrides, random_init=True, seed=seed)
        trained_in = trained_input(config, trained)
    if isinstance(twin, TokenEncoder) and level is not None:
        raise ConfigError("--level picks CPC's contexts or latents; a token encoder (Audio-MAE) has one level")
    level = level or "c"
    rows = int(twin.modality.patch[0]) if isinstance(twin, TokenEncoder) else 1
    speech, note = with_window(trained_in, samples, rows,
                               was="trained on" if checkpoint else "the encoder's modality says")
    if isinstance(twin, CPCAudioEncoder) and speech.samples % DOWNSAMPLING:
        raise ConfigError(f"a CPC window must be a multiple of {DOWNSAMPLING} samples, got {speech.samples}")
    sources = []
    if trained is not None:
        frames, pool = _frames(trained, speech, level, device)
        sources.append(FeatureSource("checkpoint", f"{checkpoint} ({_describe(trained, level)})", frames, pool))
    frames, pool = _frames(twin, speech, level, device)
    sources.append(FeatureSource("random init", f"same architecture, seed {seed} ({_describe(twin, level)})",
                                 frames, pool))
    return sources, speech, [note] if note else []


def mfcc_source(n_mfcc: int = 13) -> FeatureSource:
    """The raw baseline: MFCCs of 25 ms windows every 10 ms, a clip's mean and standard deviation per coefficient."""
    return FeatureSource("MFCC", f"{n_mfcc} coefficients, 25 ms every 10 ms", mfcc_frames(n_mfcc=n_mfcc), "mean+std")
