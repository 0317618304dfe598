"""Synthetic multi-speaker "speech" for the CPC and speech-probe tests, and audio shards with a speaker column.

A speaker is a voice: a mean pitch, a vocal-tract length (one scale on every formant and fricative band), a
spectral tilt, formant bandwidths and a breathiness (aspiration noise in voiced sounds). An utterance is a run of
phones drawn from one inventory shared by all speakers: vowels (60-160 ms, harmonics on an intonation contour
shaped by the formants), fricatives (40-100 ms of band-passed noise) and short closures. As in real speech, one
25 ms frame is mostly its phone and may carry no voice at all (a fricative, a closure), while the speaker shows
in every voiced stretch: reading the speaker takes memory across frames, what CPC's context network has.
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
                   [490, 1350, 1690], [570, 840, 2410], [440, 1020, 2240]], dtype=np.float64)  # (8, 3) formants, Hz
FRICATIVES = np.array([[5500, 1500], [3200, 900], [2200, 1800], [6500, 2500]], dtype=np.float64)  # centre, width Hz


def speakers(count: int, *, seed: int = 0) -> list[dict]:
    """Speaker parameters: mean pitch (Hz), formant scale, spectral tilt, formant bandwidth (Hz), breathiness.

    Each trait is spread evenly over its range (a Latin hypercube: one of `count` equal strata per speaker, a
    random point in it, strata shuffled per trait), so that no two voices share a pitch or a vocal tract by
    chance: a pair of speakers with the same pitch would make the speaker task mostly one of spectral envelope,
    which single-frame MFCCs capture and which hides what a context network adds.
    """
    rng = np.random.default_rng(seed)

    def spread(low: float, high: float) -> np.ndarray:
        return low + (high - low) * (rng.permutation(count) + rng.uniform(0.2, 0.8, count)) / count

    f0, scale, tilt = np.exp(spread(np.log(90), np.log(250))), spread(0.82, 1.22), spread(0.6, 1.8)
    bandwidth, breath = spread(60, 140), spread(0.02, 0.25)
    return [{"f0": float(f0[i]), "scale": float(scale[i]), "tilt": float(tilt[i]), "bandwidth": float(bandwidth[i]),
             "breath": float(breath[i])} for i in range(count)]


def _band_noise(rng: np.random.Generator, n: int, centres: np.ndarray, width: float) -> np.ndarray:
    """White noise (n,) filtered to Gaussian bands `width` wide around `centres` (Hz), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    out = np.fft.irfft(spec * np.exp(-0.5 * ((freqs[:, None] - centres) / width) ** 2).sum(1), n)
    return out / (np.sqrt(np.mean(out ** 2)) + 1e-8)


def _vowel(rng: np.random.Generator, speaker: dict, f0: np.ndarray, phase: float) -> tuple[np.ndarray, float]:
    """A voiced phone on the pitch track f0 (n,) from `phase`; returns the samples and the phase at its end."""
    formants = VOWELS[rng.integers(len(VOWELS))] * speaker["scale"]
    phases = phase + 2 * np.pi * np.cumsum(f0) / RATE  # (n,)
    h = np.arange(1, int(4000 / f0.mean()) + 1)  # (H,) harmonics below 4 kHz
    # each harmonic's gain is the formant envelope at its mean frequency: the pitch moves little within a phone
    freq = h * f0.mean()
    gain = np.exp(-0.5 * ((freq[:, None] - formants) / speaker["bandwidth"]) ** 2).sum(1) * h ** -speaker["tilt"]
    seg = gain @ np.sin(h[:, None] * phases)  # (H,) @ (H, n) -> (n,)
    seg /= np.sqrt(np.mean(seg ** 2)) + 1e-8
    return seg + speaker["breath"] * _band_noise(rng, len(f0), formants, 3 * speaker["bandwidth"]), float(phases[-1])


def utterance(speaker: dict, samples: int, *, seed: int) -> np.ndarray:
    """One float32 waveform (samples,) in [-1, 1] of `speaker`."""
    rng = np.random.default_rng(seed)
    out = np.zeros(samples)
    # intonation: a declining line with a random slope plus per-phone glides, +-15 % around the speaker's pitch
    contour = speaker["f0"] * np.exp(np.linspace(rng.uniform(0, 0.1), rng.uniform(-0.1, 0), samples))
    pos, phase = 0, 0.0
    while pos < samples:
        kind = rng.choice(3, p=[0.6, 0.28, 0.12])  # vowel, fricative, closure
        low, high = [(0.06, 0.16), (0.04, 0.10), (0.02, 0.05)][kind]
        n = min(int(rng.uniform(low, high) * RATE), samples - pos)
        if kind == 0:
            glide = np.exp(np.linspace(rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05), n))
            seg, phase = _vowel(rng, speaker, contour[pos:pos + n] * glide, phase)
        elif kind == 1:
            centre, width = FRICATIVES[rng.integers(len(FRICATIVES))]
            seg = 0.5 * _band_noise(rng, n, np.array([min(centre * speaker["scale"], 7500)]), width)
        else:
            seg = np.zeros(n)
        out[pos:pos + n] = seg * np.hanning(n) ** 0.3 if n > 2 else 0  # soft phone edges
        pos += n
    out += 0.01 * rng.standard_normal(samples)  # a noise floor, the same in every recording: no utterance cue
    return (out / (np.abs(out).max() + 1e-8) * 0.8).astype(np.float32)
def dataset(num_speakers: int, per_speaker: int, samples: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms (S * P, samples) and speaker ids (S * P,), speaker-major."""
    spk = speakers(num_speakers, seed=seed)
    waves = [utterance(s, samples, seed=seed * 100003 + i * 1009 + j) for i, s in enumerate(spk)
             for j in range(per_speaker)]
    labels = torch.arange(num_speakers).repeat_interleave(per_speaker)
    return torch.from_numpy(np.stack(waves)), labels


def speech_shards(root: Path, *, num_speakers: int = 3, per_speaker: int = 4, seconds: float = 0.5,
                  per_shard: int = 4, seed: int = 0, first: int = 0) -> Path:
    """FLAC files of synthetic speakers sharded with a `speaker` column; returns the shard folder.

    `first` numbers the utterances from there, so two calls with the same seed and disjoint ranges make train and
    held-out sets of the same speakers.
    """
    import av

    from pipelines.sharding.tool import ShardOptions, run_sharding

    src = root / "speech"
    src.mkdir(parents=True)
    spk = speakers(num_speakers, seed=seed)
    rows = []
    for i, s in enumerate(spk):
        for j in range(first, first + per_speaker):
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
