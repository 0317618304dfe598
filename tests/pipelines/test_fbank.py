"""Batched fbank against torchaudio's Kaldi fbank with Audio-MAE's arguments, written out per clip."""

import pytest
import torch
import torchaudio

from mmssl.modalities.audio import AUDIOSET_MEAN, AUDIOSET_STD
from pipelines.fbank import Fbank, analysis_matrix, num_frames


def audiomae_fbank(wave: torch.Tensor, target_length: int) -> torch.Tensor:
    """Audio-MAE's `_wav2fbank` + normalisation for one clip (1, N)."""
    wave = wave - wave.mean()
    fb = torchaudio.compliance.kaldi.fbank(wave, htk_compat=True, sample_frequency=16000, use_energy=False,
                                           window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
    p = target_length - fb.shape[0]
    fb = torch.nn.functional.pad(fb, (0, 0, 0, p)) if p > 0 else fb[:target_length]
    return (fb - AUDIOSET_MEAN) / (AUDIOSET_STD * 2)


def test_fbank_matches_kaldi_with_audiomae_args():
    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([16000 * 3, 16000 * 2 + 123, 4000, 16000 * 3])
    wave = torch.zeros(4, int(lengths.max()))
    for i, n in enumerate(lengths.tolist()):
        wave[i, :n] = 0.3 * torch.randn(n, generator=g) + 0.05 * torch.sin(torch.arange(n) * 0.05)
    ours = Fbank(target_length=256)(wave, lengths)
    assert ours.shape == (4, 256, 128)
    for i, n in enumerate(lengths.tolist()):
        ref = audiomae_fbank(wave[i:i + 1, :n], 256)
        torch.testing.assert_close(ours[i], ref, atol=1e-4, rtol=0)


def test_fbank_cuts_long_clips_and_counts_frames():
    wave = torch.randn(2, 16000 * 12)
    ours = Fbank()(wave)
    assert ours.shape == (2, 1024, 128)
    torch.testing.assert_close(ours[1], audiomae_fbank(wave[1:2], 1024), atol=1e-4, rtol=0)
    assert num_frames(400, 400, 160) == 1 and num_frames(399, 400, 160) == 0
    assert num_frames(16000, 400, 160) == torchaudio.compliance.kaldi.fbank(torch.randn(1, 16000)).shape[0]


def test_fbank_without_normalisation_is_raw_log_mel():
    wave = torch.randn(1, 8000)
    raw = Fbank(mean=None, target_length=None)(wave)
    ref = torchaudio.compliance.kaldi.fbank(wave - wave.mean(), htk_compat=True, use_energy=False,
                                            window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
    # raw log-mels of near-silent bands carry float32 noise of a few 1e-4 in any implementation (torchaudio's own
    # float32 result is that far from float64); the normalised contract above divides it by 2 * std
    torch.testing.assert_close(raw[0], ref, atol=1e-3, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fbank_on_cuda_equals_cpu():
    wave = torch.randn(8, 16000 * 10)
    fb = Fbank()
    torch.testing.assert_close(fb.cuda()(wave.cuda()).cpu(), fb.cpu()(wave), atol=1e-4, rtol=0)


def test_folded_analysis_matrix_is_kaldis_frame_processing_then_rfft():
    frame = torch.randn(400, dtype=torch.float64)
    x = frame - frame.mean()
    x = x - 0.97 * torch.cat([x[:1], x[:-1]])  # pre-emphasis, first sample repeated
    x = x * torch.hann_window(400, periodic=False, dtype=torch.float64)
    spectrum = torch.fft.rfft(x, n=512)
    re_im = frame.float() @ analysis_matrix(400, 512)  # (2F,)
    torch.testing.assert_close(re_im[:257].double(), spectrum.real, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(re_im[257:].double().abs(), spectrum.imag.abs(), atol=1e-4, rtol=1e-5)


def test_fbank_is_close_to_a_float64_kaldi_fbank_and_chunking_changes_nothing():
    wave = torch.randn(5, 16000 * 2) * 0.5 + 0.1
    truth = torch.stack([torchaudio.compliance.kaldi.fbank(
        (w.double() - w.double().mean())[None], htk_compat=True, use_energy=False, window_type="hanning",
        num_mel_bins=128, dither=0.0, frame_shift=10) for w in wave])
    raw = Fbank(mean=None, target_length=None, chunk=2)(wave)
    assert (raw.double() - truth).abs().max() < 5e-4  # torchaudio's own float32 result is ~2e-3 away in band 0
    torch.testing.assert_close(raw, Fbank(mean=None, target_length=None, chunk=None)(wave), atol=1e-5, rtol=0)
