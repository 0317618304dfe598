"""Synthetic multi-speaker "speech" for the CPC and speech-probe tests, and audio shards with a speaker column.

A speaker is a pitch range, a vocal-tract scale of the formant frequencies and a spectral tilt; an utterance is
a run of 60-160 ms "vowels" drawn from one shared inventory, each a harmonic source on a gliding pitch shaped by
the speaker's formants. So one 25 ms frame mostly tells the vowel, and the speaker shows across frames.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/media.py

RATE = 16000
VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [530, 1840, 2480], [300, 870, 2240], [660, 1720, 2410],
                   [490, 1350, 1690]], dtype=np.float64)  # (6 vowels, 3 formants) in Hz


def speakers(count: int, *, seed: int = 0) -> list[dict]:
    """Speaker parameters: mean pitch (Hz), formant scale, spectral tilt."""
    rng = np.random.default_rng(seed)
    return [{"f0": float(f0), "scale": float(s), "tilt": float(t)}
            for f0, s, t in zip(rng.uniform(90, 260, count), rng.uniform(0.8, 1.25, count),
                                rng.uniform(0.5, 2.0, count))]


def utterance(speaker: dict, samples: int, *, seed: int) -> np.ndarray:
    """One float32 waveform (samples,) in [-1, 1] of `speaker`."""
    rng = np.random.default_rng(seed)
    out = np.zeros(samples)
    pos = 0
    phase = 0.0
    while pos < samples:
        n = min(int(rng.uniform(0.06, 0.16) * RATE), samples - pos)
        formants = VOWELS[rng.integers(len(VOWELS))] * speaker["scale"]
        f0 = speaker["f0"] * np.linspace(rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.1), n)  # a pitch glide
        phases = phase + 2 * np.pi * np.cumsum(f0) / RATE
        phase = phases[-1]
        seg = np.zeros(n)
        for h in range(1, int(4000 / speaker["f0"])):
            freq = h * speaker["f0"]
            gain = sum(np.exp(-0.5 * ((freq - f) / 90.0) ** 2) for f in formants) * h ** -speaker["tilt"]
            seg += gain * np.sin(h * phases)
        seg *= np.hanning(n) ** 0.3  # soft syllable edges
        out[pos:pos + n] = seg
        pos += n
    out += 0.01 * rng.standard_normal(samples)
    return (out / (np.abs(out).max() + 1e-8) * 0.8).astype(np.float32)


def dataset(num_speakers: int, per_speaker: int, samples: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms (S * P, samples) and speaker ids (S * P,), speaker-major."""
    spk = speakers(num_speakers, seed=seed)
    waves = [utterance(s, samples, seed=seed * 100003 + i * 1009 + j) for i, s in enumerate(spk)
             for j in range(per_speaker)]
    labels = torch.arange(num_speakers).repeat_interleave(per_speaker)
    return torch.from_numpy(np.stack(waves)), labels


def speech_shards(root: Path, *, num_speakers: int = 3, per_speaker: int = 4, seconds: float = 0.5,
                  per_shard: int = 4, seed: int = 0) -> Path:
    """FLAC files of synthetic speakers sharded with a `speaker` column; returns the shard folder."""
    import av

    from pipelines.sharding.tool import ShardOptions, run_sharding

    src = root / "speech"
    src.mkdir(parents=True)
    spk = speakers(num_speakers, seed=seed)
    rows = []
    for i, s in enumerate(spk):
        for j in range(per_speaker):
            wave = utterance(s, int(seconds * RATE), seed=seed * 7919 + i * 101 + j)
            name = f"s{i}-u{j}.flac"
            pcm = (wave * 32767).astype(np.int16).reshape(1, -1)  # (1, n): mono, interleaved
            with av.open(str(src / name), "w") as out:
                stream = out.add_stream("flac", rate=RATE, layout="mono")
                stream.format = "s16"
                frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
                frame.sample_rate, frame.pts = RATE, 0
                out.mux(stream.encode(frame))
                out.mux(stream.encode())
            rows.append({"path": name, "speaker": f"spk{i}"})
    manifest = src / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_sharding(manifest, root / "shards", ShardOptions(modality="audio", samples_per_shard=per_shard), progress=False)
    return root / "shards"
