"""decode_waveform: the direct path (no swresample at the target rate) against the resampling path, bit for bit;
16-bit PCM WAV read without a decoder, equal to FFmpeg's decode of the same bytes and a stored format of the sharding
tool (`--audio-format wav`)."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest

from pipelines import audio
from pipelines.audio import decode_waveform
from pipelines.wav import encode_pcm, read_pcm

LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 6: "5.1"}


def encode(container: str, codec: str, rate: int, channels: int, sample_format: str, seconds: float = 0.4) -> bytes:
    """Tones plus a little noise, one frequency per channel, encoded in memory."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    noise = np.random.default_rng(0).standard_normal((channels, n))
    wave = np.stack([0.3 * np.sin(2 * np.pi * (300 + 100 * c) * t) for c in range(channels)]) + 0.01 * noise
    kind = av.AudioFormat(sample_format)
    pcm = {"s16": lambda: (wave * 32767).astype(np.int16), "s32": lambda: (wave * 2 ** 31 * 0.999).astype(np.int32),
           "flt": lambda: wave.astype(np.float32), "dbl": lambda: wave.astype(np.float64),
           "u8": lambda: (wave * 127 + 128).astype(np.uint8)}[kind.name.rstrip("p")]()  # (C, n)
    layout = LAYOUTS[channels]
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        stream.format = sample_format
        for start in range(0, n, 1000):
            piece = pcm[:, start:start + 1000]
            piece = np.ascontiguousarray(piece if kind.is_planar else piece.T.reshape(1, -1))  # packed: (1, n * C)
            frame = av.AudioFrame.from_ndarray(piece, format=sample_format, layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buf.getvalue()


def resampled(data: bytes, rate: int = 16000) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return audio._decode_resampled(container.decode(container.streams.audio[0]), rate)


def takes_direct_path(data: bytes, rate: int = 16000) -> bool:
    with av.open(io.BytesIO(data)) as container:
        return audio._decode_direct(container.decode(container.streams.audio[0]), rate) is not None


# (container, codec, rate, channels, encoder input format, whether the decoder's output skips swresample)
CASES = [
    ("flac", "flac", 16000, 1, "s16", True),
    ("flac", "flac", 16000, 2, "s16", True),
    ("flac", "flac", 16000, 1, "s32", True),  # 24-bit FLAC decodes to s32
    ("wav", "pcm_s16le", 16000, 2, "s16", True),
    ("wav", "pcm_s24le", 16000, 1, "s32", True),
    ("wav", "pcm_f32le", 16000, 3, "flt", True),
    ("wav", "pcm_s16le", 16000, 6, "s16", True),
    ("mp3", "libmp3lame", 16000, 2, "s16p", True),  # fltp out, with padded planes (a 47-sample first frame)
    ("adts", "aac", 16000, 2, "fltp", True),
    ("ipod", "alac", 16000, 2, "s16p", True),
    ("wv", "wavpack", 16000, 1, "fltp", True),
    ("wav", "pcm_u8", 16000, 1, "u8", False),  # formats outside _SCALES
    ("wav", "pcm_f64le", 16000, 1, "dbl", False),
    ("wav", "pcm_s16le", 44100, 2, "s16", False),  # other rates
    ("flac", "flac", 8000, 1, "s16", False),
    ("ogg", "libopus", 16000, 1, "s16", False),  # Opus always decodes at 48 kHz
]


@pytest.mark.parametrize("container,codec,rate,channels,sample_format,direct", CASES)
def test_decode_equals_the_resampling_path(container, codec, rate, channels, sample_format, direct):
    try:
        data = encode(container, codec, rate, channels, sample_format)
    except (av.error.FFmpegError, ValueError) as error:  # an FFmpeg build without this encoder
        pytest.skip(f"cannot encode {codec}: {error}")
    assert takes_direct_path(data) == direct
    wave, start = decode_waveform(data)
    reference = resampled(data)
    assert wave.dtype == np.float32 and wave.ndim == 1 and wave.flags.writeable
    assert np.array_equal(wave, reference)  # same samples, same bits
    assert start >= 0.0 and len(wave) > 0.3 * 16000  # 0.4 s = 6400 encoded (measured 6400, 8192 for AAC)


def frame(values: np.ndarray, sample_format: str, rate: int, layout: str = "mono") -> av.AudioFrame:
    out = av.AudioFrame.from_ndarray(values, format=sample_format, layout=layout)
    out.sample_rate = rate
    return out


def test_direct_path_converts_as_swresample_and_gives_up_on_a_mid_stream_change():
    rng = np.random.default_rng(1)
    a, b = (rng.integers(-32768, 32767, (1, n), dtype=np.int16) for n in (1001, 577))  # odd sizes: padded planes
    wave = audio._decode_direct(iter([frame(a, "s16", 16000), frame(b, "s16", 16000)]), 16000)
    assert np.array_equal(wave, np.concatenate([a[0], b[0]]).astype(np.float32) / 32768)
    stereo = rng.integers(-2 ** 31, 2 ** 31 - 1, (2, 333), dtype=np.int32)  # planar s32: per-channel planes
    wave = audio._decode_direct(iter([frame(stereo, "s32p", 16000, "stereo")]), 16000)
    planar = stereo.astype(np.float32) * np.float32(2.0 ** -31)
    assert np.array_equal(wave, planar.mean(axis=0))
    changes = [frame(b, "s16", 8000), frame(b.astype(np.float32) / 32768, "flt", 16000),
               frame(np.repeat(b, 2, axis=1), "s16", 16000, "stereo")]  # rate, format, channels
    for change in changes:
        assert audio._decode_direct(iter([frame(a, "s16", 16000), change]), 16000) is None
    assert audio._decode_direct(iter([frame(a, "s16", 22050)]), 16000) is None
    with pytest.raises(ValueError, match="no decodable audio"):
        audio._decode_direct(iter([]), 16000)


def test_decode_starts_over_with_swresample_when_the_direct_path_gives_up(monkeypatch):
    data = encode("flac", "flac", 16000, 2, "s16")
    direct, start = decode_waveform(data)
    monkeypatch.setattr(audio, "_decode_direct", lambda frames, rate: next(frames) and None)  # gives up mid-way
    wave, start_again = decode_waveform(data)
    assert np.array_equal(wave, direct) and start_again == start


# -- 16-bit PCM WAV, read without a decoder ---------------------------------------------------------------

def ffmpeg_wave(data: bytes, rate: int) -> np.ndarray:
    """decode_waveform's FFmpeg route on these bytes."""
    with av.open(io.BytesIO(data)) as container:
        wave = audio._decode_direct(container.decode(container.streams.audio[0]), rate)
    assert wave is not None
    return wave


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_pcm_wav_reads_as_ffmpeg_decodes_it(channels):
    data = encode("wav", "pcm_s16le", 16000, channels, "s16")
    ours = read_pcm(data, 16000)
    assert ours is not None and ours.dtype == np.float32
    assert np.array_equal(ours, ffmpeg_wave(data, 16000))  # bit for bit
    assert np.array_equal(audio.decode_waveform(data)[0], ours)


def test_written_wav_round_trips_and_is_what_ffmpeg_reads():
    samples = (np.random.default_rng(1).standard_normal(4000) * 3000).astype(np.int16)
    data = encode_pcm(samples, 16000)
    assert len(data) == 44 + 2 * len(samples)
    assert np.array_equal(read_pcm(data, 16000), samples.astype(np.float32) / 32768)
    assert np.array_equal(read_pcm(data, 16000), ffmpeg_wave(data, 16000))


@pytest.mark.parametrize("kind", ["24-bit", "float", "other rate", "flac", "cut header", "not riff"])
def test_anything_else_is_left_to_the_decoder(kind):
    data = {"24-bit": lambda: encode("wav", "pcm_s24le", 16000, 1, "s32"),
            "float": lambda: encode("wav", "pcm_f32le", 16000, 1, "flt"),
            "other rate": lambda: encode("wav", "pcm_s16le", 22050, 1, "s16"),
            "flac": lambda: encode("flac", "flac", 16000, 1, "s16"),
            "cut header": lambda: encode("wav", "pcm_s16le", 16000, 1, "s16")[:30],
            "not riff": lambda: b"\x00" * 64}[kind]()
    assert read_pcm(data, 16000) is None
    if kind in ("24-bit", "float", "other rate", "flac"):
        wave, _ = audio.decode_waveform(data)  # the general route still reads it
        assert wave.dtype == np.float32 and len(wave) > 1000


def test_sharding_can_store_pcm_that_reads_like_the_flac(tmp_path):
    from media import make_audio
    from pipelines.sharding.samples import Transcode
    from pipelines.sharding.tool import ShardOptions, run_sharding
    from pipelines.loader import StreamLoader

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        make_audio(src / f"t{i}.flac", seconds=0.7, freq=300 + 90 * i)
    read = {}
    for fmt in ("flac", "wav"):
        run_sharding(src, tmp_path / fmt, ShardOptions(modality="audio", transcode=Transcode(enabled=True,
                                                                                              audio_format=fmt)),
                     progress=False)
        stored = next(iter(StreamLoader(str(tmp_path / fmt), batch_size=3, shuffle_window=0, shuffle_shards=False)))
        assert fmt in stored and all(len(d) > 1000 for d in stored[fmt])  # the format asked for is what is stored
        read[fmt] = next(iter(StreamLoader(str(tmp_path / fmt), batch_size=3, shuffle_window=0, shuffle_shards=False,
                                           stages=[audio.decode_audio(seconds=1.0)])))
    assert np.array_equal(read["wav"]["audio"].numpy(), read["flac"]["audio"].numpy())  # FLAC is lossless
    assert read["wav"]["audio_len"].tolist() == read["flac"]["audio_len"].tolist()
