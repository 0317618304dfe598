"""Image, map and audio decode stages: exact maps, mono 16 kHz segments, skip markers for corrupt files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from media import encode_png16, make_audio, make_corrupt, make_image
from pipelines.audio import decode_audio, decode_waveform, segment
from pipelines.images import decode_images, decode_jpeg_batch, decode_maps, read_depth_png
from pipelines.sample import is_skipped


def run_all(stage, samples):
    return list(stage(iter(samples)))


def png(array: np.ndarray, mode: str, palette: bool = False) -> bytes:
    img = Image.fromarray(array, mode=mode)
    if palette:
        img.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 11) % 256)])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_depth_png16_round_trips_exactly():
    depth = np.random.default_rng(0).integers(0, 65536, (37, 53)).astype(np.uint16)
    depth[0, :4] = [0, 1, 256, 65535]  # both bytes and the extremes
    assert np.array_equal(read_depth_png(encode_png16(depth)), depth.astype(np.int32))


def test_maps_decode_exactly():
    rng = np.random.default_rng(1)
    depth = rng.integers(0, 65536, (24, 32)).astype(np.uint16)
    labels = rng.integers(0, 133, (24, 32)).astype(np.uint8)
    for label_bytes in (png(labels, "L"), png(labels, "P", palette=True)):
        sample = {"__key__": "m", "depth.png": encode_png16(depth), "semseg.png": label_bytes, "cls": 3}
        (out,) = run_all(decode_maps(), [sample])
        assert torch.equal(out["depth"], torch.from_numpy(depth.astype(np.int32)))
        assert torch.equal(out["semseg"], torch.from_numpy(labels)) and out["cls"] == 3
    rgb = png(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8), "RGB")
    (bad,) = run_all(decode_maps(), [{"__key__": "m", "depth.png": encode_png16(depth), "semseg.png": rgb}])
    assert is_skipped(bad) and "semseg" not in bad and "mode RGB" in bad["__skip__"]


def test_images_decode_on_worker_or_keep_bytes(tmp_path):
    data = make_image(tmp_path / "a.jpg", width=60, height=44).read_bytes()
    (out,) = run_all(decode_images(), [{"__key__": "a", "jpg": data}])
    assert out["image"].shape == (3, 44, 60) and out["image"].dtype == torch.uint8 and "jpg" not in out
    (kept,) = run_all(decode_images(on="device"), [{"__key__": "a", "jpg": data}])
    (img,) = decode_jpeg_batch([kept["image_bytes"]], "cpu")
    assert torch.equal(img, out["image"])
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1)
    # libjpeg-turbo vs PIL's IDCT and chroma upsampling: decoders may differ by a level or two on some pixels, so a
    # mean under one level (measured 0 with the same libjpeg-turbo here)
    assert np.abs(out["image"].numpy().astype(int) - expected).mean() < 1.0


def test_corrupt_images_become_skip_markers(tmp_path):
    good = make_image(tmp_path / "g.jpg").read_bytes()
    cut = make_corrupt(tmp_path / "c.jpg", like=tmp_path / "g.jpg", size=120).read_bytes()
    junk = make_corrupt(tmp_path / "j.jpg").read_bytes()
    samples = [{"__key__": "g", "jpg": good}, {"__key__": "c", "jpg": cut}, {"__key__": "j", "jpg": junk},
               {"__key__": "none", "txt": b"x"}]
    outs = run_all(decode_images(), samples)
    assert [is_skipped(o) for o in outs] == [False, True, True, True]
    assert "none" in outs[3]["__skip__"]


@pytest.mark.parametrize("suffix,rate,channels", [(".flac", 16000, 1), (".wav", 44100, 2), (".wav", 8000, 2), (".flac", 22050, 1)])
def test_audio_decodes_to_mono_16k(tmp_path, suffix, rate, channels):
    data = make_audio(tmp_path / f"t{suffix}", seconds=0.5, rate=rate, channels=channels).read_bytes()
    wave, start = decode_waveform(data)
    # 0.5 s: the length within a resampler's edge (64 samples, 4 ms; measured exact); the peak within two FFT bins
    # of 16000 / 6000 = 2.7 Hz (measured exact); the 0.3 amplitude within 0.05, room for resampling ripple and
    # mixing (measured 0.29999)
    assert wave.dtype == np.float32 and abs(len(wave) - 8000) <= 64 and start == 0.0
    spectrum = np.abs(np.fft.rfft(wave[1000:7000]))
    assert abs(np.argmax(spectrum) * 16000 / 6000 - 440) < 5  # the tone survives mixing and resampling
    assert 0.25 < np.abs(wave[1000:7000]).max() < 0.35


def test_audio_segments_pad_cut_and_draw_from_the_sample_generator(tmp_path):
    data = make_audio(tmp_path / "t.flac", seconds=1.0).read_bytes()
    samples = [{"__key__": "t", "__seed__": 1, "__epoch__": e, "flac": data} for e in (0, 0, 1)]
    outs = run_all(decode_audio(samples=4000, position="random"), samples)
    assert all(o["audio"].shape == (4000,) and o["audio_len"] == 4000 for o in outs)
    assert torch.equal(outs[0]["audio"], outs[1]["audio"])
    (padded,) = run_all(decode_audio(seconds=2.0), samples[:1])
    assert padded["audio"].shape == (32000,) and padded["audio_len"] == 16000
    assert float(padded["audio"][16000:].abs().max()) == 0.0
    wave = np.arange(10, dtype=np.float32)
    assert segment(wave, 4, position="centre")[0].tolist() == [3, 4, 5, 6]
    assert segment(wave, 4, position="start")[0].tolist() == [0, 1, 2, 3]


def test_corrupt_audio_becomes_skip_markers(tmp_path):
    good = make_audio(tmp_path / "a.flac").read_bytes()
    junk = make_corrupt(tmp_path / "n.flac").read_bytes()
    outs = run_all(decode_audio(), [{"__key__": "a", "flac": good}, {"__key__": "n", "flac": junk},
                                    {"__key__": "cut", "flac": good[:100]}])
    assert [is_skipped(o) for o in outs] == [False, True, True]
