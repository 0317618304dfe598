"""Pipeline throughput: the recipe's feed, built from the shipped configs, against the usual per-file loaders.

Makes its own media (H.264 320x240 with a 1 s GOP and B-frames, ~500x375 JPEGs, 10 s FLAC clips), shards it with
the sharding tool, and measures, with the same number of worker processes on each side:
- video clips/s: ours is `video/videomae_vit_base`'s data section with 4 clips per decoded video (`--repeats`; the
  config makes 2) (decord over the stored bytes, one decode of the needed frames for all clips of a video, each
  clip's crop, flip, patchify, fused cast + normalise and tube mask) vs a VideoMAE-style loader (a decord VideoReader per clip from the mp4 file, 16 frames
  at stride 4, multi-scale crop, resize, to-tensor and normalise frame by frame on PIL images);
- images/s: ours is `image/byol_vit_base`'s (libjpeg-turbo decode and the two views' crops in workers, then flips,
  colour jitter, grayscale, blur, solarize and patchify batched) vs torchvision ImageFolder + DataLoader with
  BYOL's two views made per image;
- spectrograms/s: ours is `audio/audiomae_vit_base`'s (decode, batched Kaldi fbank, 1024 frames) vs kaldi fbank
  per clip in workers, once from shards of the source FLAC bytes and once from shards transcoded to 16 kHz 16-bit
  PCM WAV (`mmssl shard --transcode --audio-format wav`), which needs no decoding; the baseline reads the source
  FLAC files both times.
Ours is `recipes.pretrain.build_run(config)`'s `Feed`, what `mmssl ... pretrain` trains from: on a CPU its device
stage runs inside the loader's workers, with CUDA on the GPU a few batches ahead of the consumer (and the GPU paths
nvjpeg, NVDEC when PyNvVideoCodec is installed, and fbank on CUDA are measured too). Besides the rates it prints
the CPU milliseconds per item, of all processes and of the training process alone (what the loader leaves it to
do): the rates move with whatever else runs on the machine, the CPU cost per item much less.

Run: `python benchmarks/pipeline.py [--workers 2] [--only video|image|audio] [--workdir DIR]`.
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import resource
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLIP_FRAMES, STRIDE, SIZE = 16, 4, 224
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CONFIGS = {"video": "video/videomae_vit_base", "image": "image/byol_vit_base", "audio": "audio/audiomae_vit_base"}


# -- media -------------------------------------------------------------------------------------------------------

def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour fields plus fine noise: JPEG/H.264 sizes close to natural footage."""
    from PIL import Image

    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    return np.clip(np.asarray(base, dtype=np.int16) + rng.integers(-18, 19, (h, w, 3)), 0, 255).astype(np.uint8)


def make_videos(root: Path, count: int, frames: int) -> list[Path]:
    import av

    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        scene = _texture(rng, 300, 400)
        path = root / "video" / f"c{i % 4}" / f"v{i}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            stream.codec_context.gop_size = 30  # a keyframe a second, as typical web video
            stream.options = {"crf": "23", "preset": "veryfast", "bf": "2", "sc_threshold": "0"}
            for t in range(frames):  # a slow pan over the scene
                y, x = int(30 + 25 * math.sin(t / 40)), int(40 + 35 * math.cos(t / 50))
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(scene[y:y + 240, x:x + 320]), format="rgb24")
                out.mux(stream.encode(frame))
            out.mux(stream.encode())
        paths.append(path)
    return paths


def make_images(root: Path, count: int) -> list[Path]:
    from PIL import Image

    paths = []
    for i in range(count):
        path = root / "image" / f"c{i % 4}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_texture(np.random.default_rng(i), 375, 500)).save(path, quality=90)
        paths.append(path)
    return paths


def make_audio(root: Path, count: int, seconds: float) -> list[Path]:
    import av

    paths = []
    for i in range(count):
        path = root / "audio" / f"c{i % 4}" / f"{i}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(i)
        t = np.arange(int(seconds * 16000)) / 16000
        wave = 0.2 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.05 * rng.standard_normal(len(t))
        pcm = (wave * 32767).astype(np.int16).reshape(1, -1)
        with av.open(str(path), "w") as out:
            stream = out.add_stream("flac", rate=16000, layout="mono")
            for start in range(0, pcm.shape[1], 4096):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[:, start:start + 4096]), format="s16",
                                                   layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = 16000, start, Fraction(1, 16000)
                out.mux(stream.encode(frame))
            out.mux(stream.encode())
        paths.append(path)
    return paths


def shard(src: Path, out: Path, modality: str, gop: int | None = None, audio_format: str | None = None) -> Path:
    """Shards the media; with `gop`, videos are transcoded to that keyframe interval, with `audio_format` audio to
    mono 16 kHz FLAC or 16-bit PCM WAV (our stored formats); otherwise the source bytes are stored."""
    from pipelines.sharding.samples import Transcode
    from pipelines.sharding.tool import ShardOptions, run_sharding

    if out.exists():  # media are regenerated each run, so are the shards
        shutil.rmtree(out)
    transcode = Transcode()
    if gop:
        transcode = Transcode(enabled=True, short_side=256, gop=gop)
    elif audio_format:
        transcode = Transcode(enabled=True, audio_format=audio_format)
    run_sharding(src, out, ShardOptions(modality=modality, samples_per_shard=64, transcode=transcode),
                 progress=False)
    return out / "index.json"


# -- timing ------------------------------------------------------------------------------------------------------

def _cpu_seconds(who: str = "all") -> float:
    """User + system CPU time of this process ("self"), of its finished (joined) children, e.g. loader workers
    ("children"), or both ("all")."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    mine, theirs = own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime
    return {"self": mine, "children": theirs, "all": mine + theirs}[who]


class Timing:
    """Items per second once the first batch is in (the steady state a training run sees; later epochs' worker
    start-up included, for ours and the baselines alike), and CPU milliseconds per item of all processes and of
    this one (the training process).

    The workers' CPU time is counted when they have finished, so the iterable is closed (or dropped) first; the
    first batch's CPU time is counted too (a little against both sides), its wall time not.
    """

    def __init__(self, batches: Iterable, count: Callable[[object], int], items: int) -> None:
        cpu, own = _cpu_seconds(), _cpu_seconds("self")
        it = iter(batches)
        first = count(next(it))
        done, start = 0, time.perf_counter()
        while done + first < items:
            done += count(next(it))
        self.rate = done / (time.perf_counter() - start)
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # ends the workers, so their CPU time is in RUSAGE_CHILDREN
        del it, batches
        gc.collect()
        self.cpu_ms = (_cpu_seconds() - cpu) * 1000 / (done + first)
        self.main_ms = (_cpu_seconds("self") - own) * 1000 / (done + first)


def epochs(loader, n: int):
    for _ in range(n):
        yield from loader


# -- baselines ---------------------------------------------------------------------------------------------------

class VideoMAEClips(torch.utils.data.Dataset):
    """VideoMAE-style: a VideoReader per clip, 16 frames at stride 4, multi-scale crop and per-frame transforms."""

    def __init__(self, paths: list[Path], repeats: int) -> None:
        self.paths, self.repeats = paths, repeats

    def __len__(self) -> int:
        return len(self.paths) * self.repeats

    def __getitem__(self, i: int) -> torch.Tensor:
        import decord
        import torchvision.transforms.functional as TF
        from PIL import Image

        reader = decord.VideoReader(str(self.paths[i % len(self.paths)]), num_threads=1, ctx=decord.cpu(0))
        span = (CLIP_FRAMES - 1) * STRIDE + 1
        start = random.randint(0, max(len(reader) - span, 0))
        index = [min(start + k * STRIDE, len(reader) - 1) for k in range(CLIP_FRAMES)]
        frames = [Image.fromarray(f) for f in reader.get_batch(index).asnumpy()]
        w, h = frames[0].size
        side = min(w, h) * random.choice([1, 0.875, 0.75, 0.66])  # GroupMultiScaleCrop's scales
        top, left = random.randint(0, int(h - side)), random.randint(0, int(w - side))
        out = [TF.normalize(TF.to_tensor(TF.resized_crop(f, top, left, int(side), int(side), [SIZE, SIZE])), MEAN, STD)
               for f in frames]
        return torch.stack(out, 1)  # (3, T, H, W)


class TwoViews:
    """BYOL's two views of an image, as its reference input pipeline makes them: per image, with torchvision."""

    def __init__(self) -> None:
        import torchvision.transforms as T

        def view(blur: float, solarize: float):
            return T.Compose([
                T.RandomResizedCrop(SIZE, scale=(0.08, 1.0)), T.RandomHorizontalFlip(),
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), T.RandomGrayscale(0.2),
                T.RandomApply([T.GaussianBlur(23, (0.1, 2.0))], p=blur), T.RandomSolarize(128, p=solarize),
                T.ToTensor(), T.Normalize(MEAN, STD)])

        self.views = [view(1.0, 0.0), view(0.1, 0.2)]  # image/byol_vit_base.yaml's two views

    def __call__(self, image):
        return [v(image) for v in self.views]


class KaldiClips(torch.utils.data.Dataset):
    """Audio-MAE-style: decode one file, kaldi fbank, pad/cut to 1024, normalise, per clip in a worker."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        import torchaudio

        from pipelines.audio import decode_waveform

        wave = torch.from_numpy(decode_waveform(self.paths[i].read_bytes())[0])[None]
        fb = torchaudio.compliance.kaldi.fbank(wave - wave.mean(), htk_compat=True, use_energy=False,
                                               window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
        fb = torch.nn.functional.pad(fb, (0, 0, 0, max(1024 - fb.shape[0], 0)))[:1024]
        return (fb + 4.2677393) / (2 * 4.5689974)


def loader(dataset, batch: int, workers: int, **kw):
    return torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=workers, shuffle=True,
                                       persistent_workers=False, **kw)


# -- ours --------------------------------------------------------------------------------------------------------

def ours(kind: str, index: Path, *, batch: int, workers: int, device: torch.device, repeats: int | None = None,
         extra: Sequence[str] = ()):
    """The recipe's feed for the shipped config of `kind`, reading `index` (`build_run`, as `mmssl pretrain`), with
    `repeats` clips per video and `extra` overrides (other decode stages)."""
    from recipes.pretrain import build_run, load_run_config

    overrides = [f"data.train.source={index}", f"data.train.batch_size={batch}", f"data.train.num_workers={workers}",
                 "data.train.shuffle_window=64", "data.train.max_skip_fraction=0.0", f"train.device={device.type}"]
    if kind == "video" and repeats:
        overrides.append(f"data.train.stages.0.clips={repeats}")
    return build_run(load_run_config(CONFIGS[kind], None, [*overrides, *extra])).feed


COUNT = {"video": lambda b: b["video"].batch_size, "image": lambda b: b["views"][0].batch_size,
         "audio": lambda b: b["audio"].batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--video-frames", type=int, default=180)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--clips", type=int, default=96, help="audio clips of 10 s")
    parser.add_argument("--gop", type=int, default=0,
                        help="transcode sharded videos to this keyframe interval (0: store the source bytes)")
    parser.add_argument("--repeats", type=int, default=4,
                        help="video clips cut from one decode (repeated sampling; the shipped config makes 2)")
    parser.add_argument("--only", choices=["video", "image", "audio"], default=None, help="measure one modality")
    parser.add_argument("--workdir", default=None, help="keep media and shards here (default: a temp dir)")
    args = parser.parse_args()

    root = Path(args.workdir or tempfile.mkdtemp(prefix="mmssl-bench-"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    print(f"workers {args.workers}, device stage on {device} ({'a thread ahead' if cuda else 'in the workers'}), "
          f"in {root}", flush=True)
    t0 = time.perf_counter()
    videos = make_videos(root / "media", args.videos, args.video_frames) if args.only in (None, "video") else []
    images = make_images(root / "media", args.images) if args.only in (None, "image") else []
    clips = make_audio(root / "media", args.clips, 10.0) if args.only in (None, "audio") else []
    # videos are stored as they come (or transcoded with --gop): measured here, a keyframe every 4 frames made
    # the files 6x larger and decoding 2.5x slower, so the default keeps the source's GOP
    kinds = (args.only,) if args.only else ("video", "image", "audio")
    idx = {m: shard(root / "media" / m, root / "shards" / m, m, (args.gop or None) if m == "video" else None)
           for m in kinds}
    if "audio" in kinds:  # also the stored format that needs no decoding: 16-bit PCM (`mmssl shard --audio-format`)
        idx["audio-pcm"] = shard(root / "media" / "audio", root / "shards" / "audio-pcm", "audio", audio_format="wav")
        kinds = (*kinds, "audio-pcm")
    print(f"media and shards made in {time.perf_counter() - t0:.1f} s", flush=True)
    w, results = args.workers, {}
    # ours and the baseline handle the same number of items, two epochs of each (worker start-up included)
    # 16 clips per batch on both sides: a decoded video makes --repeats of them
    plans = {"video": (max(1, 16 // args.repeats), 2 * len(videos) * args.repeats,
                       lambda: epochs(loader(VideoMAEClips(videos, repeats=args.repeats), 16, w), 2),
                       lambda b: b.shape[0]),
             "image": (64, 2 * len(images), lambda: epochs(_image_baseline(root, w), 2), lambda b: b[0][0].shape[0]),
             "audio": (32, 2 * len(clips), lambda: epochs(loader(KaldiClips(clips), 32, w), 2), lambda b: b.shape[0])}
    plans["audio-pcm"] = plans["audio"]  # the same baseline: per-clip kaldi fbank on the source files
    for kind in kinds:
        batch, items, baseline, count = plans[kind]
        config = kind.split("-")[0]
        results[f"{kind} ours"] = Timing(ours(config, idx[kind], batch=batch, workers=w, device=device,
                                              repeats=args.repeats), COUNT[config], items)
        results[f"{kind} baseline"] = Timing(baseline(), count, items)
        print(f"{kind}/s: ours {results[f'{kind} ours'].rate:.1f}, baseline {results[f'{kind} baseline'].rate:.1f}",
              flush=True)
    if cuda and not args.only:
        gpu_paths(results, idx, w, device)
    report(results, kinds)
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)


def _image_baseline(root: Path, workers: int):
    from torchvision.datasets import ImageFolder

    return loader(ImageFolder(str(root / "media" / "image"), transform=TwoViews()), 64, workers)


def report(results: dict, kinds: Iterable[str]) -> None:
    """Rates, CPU cost per item (all processes, and the training process alone), ratios against the targets."""
    for name, t in results.items():
        line = f"{name:>24}: {t.rate:9.1f} /s" if isinstance(t, Timing) else f"{name:>24}: {t:9.1f} /s"
        if isinstance(t, Timing):
            line += f"   CPU {t.cpu_ms:6.1f} ms per item, training process {t.main_ms:5.1f} ms"
            if name.endswith("ours"):
                line += f" ({t.main_ms / t.cpu_ms:.0%})"
        print(line)
    for what in kinds:
        target = {"video": 2.0, "image": 1.5, "audio": 1.5, "audio-pcm": 1.5}[what]
        ours_t, base = results[f"{what} ours"], results[f"{what} baseline"]
        print(f"{what} ratio ours/baseline: {ours_t.rate / base.rate:.2f} (target >= {target}); CPU cost per item "
              f"baseline/ours: {base.cpu_ms / ours_t.cpu_ms:.2f}; training process {ours_t.main_ms:.1f} of "
              f"{ours_t.cpu_ms:.1f} ms per item (target <= 20%)")


def gpu_paths(results: dict, idx: dict, workers: int, device: torch.device) -> None:
    """nvjpeg (bytes to the device), NVDEC (plans from workers), fbank on CUDA at a large batch."""
    from pipelines.fbank import Fbank

    stages = ['data.train.stages=[{_component_: pipelines.images.decode_images, "on": device}]']  # YAML: quote on
    results["image nvjpeg"] = _override_rate("image", idx["image"], stages, 256, workers, device)
    try:
        import PyNvVideoCodec  # noqa: F401
    except ImportError:
        print("PyNvVideoCodec not installed: NVDEC path not measured (pip install 'mmssl[gpu]')")
    else:
        stages = [f"data.train.stages=[{{_component_: pipelines.video.decode_clips, num_frames: {CLIP_FRAMES}, "
                  f"stride: {STRIDE}, clips: 2, backend: nvdec}}]"]
        results["video nvdec"] = _override_rate("video", idx["video"], stages, 16, workers, device)
    fbank, wave = Fbank().to(device), torch.randn(256, 160000, device=device)
    fbank(wave)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        fbank(wave)
    torch.cuda.synchronize()
    results["fbank cuda (256x10s)"] = 2560 / (time.perf_counter() - start)


def _override_rate(kind: str, index: Path, extra: list[str], batch: int, workers: int, device: torch.device, *,
                   seconds: float = 20.0) -> float:
    """Items/s of the shipped config of `kind` with `extra` overrides (other decode stages), over `seconds`."""
    feed = ours(kind, index, batch=batch, workers=workers, device=device, extra=extra)
    count, done, start = COUNT[kind], 0, time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            done += count(next(feed))
        if device.type == "cuda":
            torch.cuda.synchronize()
    finally:
        feed.close()
    return done / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
