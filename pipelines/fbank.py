"""Kaldi-compatible log-mel filterbanks for whole batches of waveforms, on any device (Audio-MAE's features).

Audio-MAE (Huang et al., 2022), after AST, builds its input per clip with
`torchaudio.compliance.kaldi.fbank(w - w.mean(), htk_compat=True, use_energy=False, window_type="hanning",
num_mel_bins=128, dither=0.0, frame_shift=10)` at 16 kHz, zero-pads or cuts the (frames, 128) result at the end to
`target_length` frames and normalises with (x - mean) / (2 * std). `Fbank` computes the same thing for a padded
batch (B, N) with per-clip valid lengths, as tensor ops that run on the GPU: framing by `unfold`, one batched
`rfft`, one matmul with the mel matrix. Kaldi's per-frame steps are kept in order (DC removal, pre-emphasis with
the first sample repeated, window, zero-pad to a power of two, power spectrum, mel, log with a float eps floor).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmssl.modalities.audio import AUDIOSET_MEAN, AUDIOSET_STD

__all__ = ["Fbank", "mel_matrix", "num_frames"]


def _mel(freq: Tensor) -> Tensor:
    return 1127.0 * torch.log(1.0 + freq / 700.0)  # the HTK mel scale Kaldi uses


def mel_matrix(num_bins: int, fft_size: int, rate: float, low: float = 20.0, high: float = 0.0) -> Tensor:
    """Kaldi's triangular mel filters (num_bins, fft_size // 2 + 1), float32; the Nyquist column is zero.

    Args:
        num_bins: number of mel bands.
        fft_size: padded window length (a power of two for Kaldi's defaults).
        rate: sample rate in Hz.
        low: lowest band edge in Hz.
        high: highest band edge in Hz; zero or negative counts down from Nyquist, as in Kaldi.
    """
    nyquist = rate / 2
    high = high + nyquist if high <= 0 else high
    if not 0 <= low < high <= nyquist:
        raise ValueError(f"mel band edges must satisfy 0 <= low < high <= {nyquist}, got {low}, {high}")
    lo, hi = 1127.0 * math.log1p(low / 700.0), 1127.0 * math.log1p(high / 700.0)
    delta = (hi - lo) / (num_bins + 1)  # bands overlap by half: num_bins + 2 edges share the range
    # float32 on purpose: the narrow lowest bands are sensitive to rounding, and Kaldi ports compute them so
    k = torch.arange(num_bins, dtype=torch.float32)[:, None]  # (num_bins, 1)
    left, centre, right = lo + k * delta, lo + (k + 1.0) * delta, lo + (k + 2.0) * delta
    fft_mel = _mel(rate / fft_size * torch.arange(fft_size // 2, dtype=torch.float32))[None]  # (1, fft/2)
    up = (fft_mel - left) / (centre - left)
    down = (right - fft_mel) / (right - centre)
    bands = torch.clamp(torch.minimum(up, down), min=0.0)  # (num_bins, fft/2)
    return torch.nn.functional.pad(bands, (0, 1))  # (num_bins, fft/2 + 1): Kaldi leaves the Nyquist bin out


def num_frames(samples: Tensor | int, frame_length: int, frame_shift: int) -> Tensor | int:
    """Frames Kaldi cuts from `samples` samples with snip_edges=True (no frame runs past the end)."""
    if isinstance(samples, Tensor):
        return torch.where(samples >= frame_length, (samples - frame_length) // frame_shift + 1, 0)
    return 0 if samples < frame_length else (samples - frame_length) // frame_shift + 1


class Fbank(torch.nn.Module):
    """Batched Kaldi fbank with Audio-MAE's options, padding/cutting and dataset normalisation.

    Args:
        rate: sample rate of the input (16 kHz for Audio-MAE).
        num_mel_bins: mel bands (128).
        frame_length_ms: window length in ms (Kaldi's default 25).
        frame_shift_ms: hop in ms (10).
        target_length: frames per output, zero-padded or cut at the end (1024 for AudioSet, None keeps all).
        mean: dataset mean of the log-mel values (AudioSet's by default); None skips normalisation.
        std: dataset std; the output is (x - mean) / (2 * std) as in AST and Audio-MAE.
        preemphasis: Kaldi's pre-emphasis coefficient.
    """

    def __init__(self, *, rate: int = 16000, num_mel_bins: int = 128, frame_length_ms: float = 25.0,
                 frame_shift_ms: float = 10.0, target_length: int | None = 1024, mean: float | None = AUDIOSET_MEAN,
                 std: float = AUDIOSET_STD, preemphasis: float = 0.97) -> None:
        super().__init__()
        self.frame_length = int(rate * frame_length_ms / 1000)
        self.frame_shift = int(rate * frame_shift_ms / 1000)
        self.fft_size = 1 << max(self.frame_length - 1, 1).bit_length()  # next power of two, Kaldi's rounding
        self.target_length, self.mean, self.std, self.preemphasis = target_length, mean, std, preemphasis
        self.register_buffer("mel", mel_matrix(num_mel_bins, self.fft_size, rate), persistent=False)
        # Kaldi's "hanning" is the symmetric Hann window; torch's own float32 values, since a window that differs
        # in the last bit leaks enough energy into near-silent low bands to move their log by 1e-3
        self.register_buffer("window", torch.hann_window(self.frame_length, periodic=False), persistent=False)

    def forward(self, wave: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Log-mel features of a batch.

        Args:
            wave: (B, N) float waveforms, zero-padded at the end.
            lengths: (B,) valid samples per clip; None means all N.

        Returns:
            (B, target_length, num_mel_bins) float32, normalised when `mean` is set.
        """
        if wave.dim() != 2:
            raise ValueError(f"Fbank expects waveforms (B, N), got shape {tuple(wave.shape)}")
        wave = wave.float()
        b, n = wave.shape
        if lengths is None:
            lengths = torch.full((b,), n, dtype=torch.long, device=wave.device)
        lengths = lengths.to(device=wave.device, dtype=torch.long)
        valid = torch.arange(n, device=wave.device)[None] < lengths[:, None]  # (B, N)
        # the clip mean is removed over the valid samples only, as each clip was centred before padding
        mean = (wave * valid).sum(1, keepdim=True) / lengths.clamp(min=1)[:, None]
        wave = (wave - mean) * valid
        if n < self.frame_length:
            wave = torch.nn.functional.pad(wave, (0, self.frame_length - n))
        frames = wave.unfold(1, self.frame_length, self.frame_shift)  # (B, M, L): strided windows
        frames = frames - frames.mean(-1, keepdim=True)  # Kaldi's remove_dc_offset, per frame
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # x[i-1], with x[-1] := x[0]
        frames = (frames - self.preemphasis * previous) * self.window
        spectrum = torch.fft.rfft(frames, n=self.fft_size).abs().pow(2)  # (B, M, fft/2 + 1) power
        mel = spectrum @ self.mel.t()  # (B, M, num_mel_bins)
        out = torch.log(mel.clamp(min=torch.finfo(torch.float32).eps))
        counts = num_frames(lengths, self.frame_length, self.frame_shift)  # (B,)
        out = self._fit(out, counts)
        if self.mean is not None:
            out = (out - self.mean) / (2 * self.std)
        return out

    def _fit(self, feats: Tensor, counts: Tensor) -> Tensor:
        """Zeroes frames past each clip's own length, then pads or cuts to `target_length` at the end."""
        b, m, f = feats.shape
        keep = torch.arange(m, device=feats.device)[None, :, None] < counts[:, None, None]  # (B, M, 1)
        feats = feats * keep
        target = m if self.target_length is None else self.target_length
        if m >= target:
            return feats[:, :target]
        return torch.nn.functional.pad(feats, (0, 0, 0, target - m))  # (B, target, F)
