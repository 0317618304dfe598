"""Pipeline throughput: our shards + worker stages + device stage against the usual per-file loaders.

Makes its own media (H.264 320x240 with a 1 s GOP and B-frames, ~500x375 JPEGs, 10 s FLAC clips), shards it with
the sharding tool, and measures in one run with the same number of worker processes:
- video clips/s: ours (decord over the stored bytes, one decode of the needed frames for --repeats clips, uint8
  crop and flip in the workers, channel-last; patchify, a fused cast + normalise and tube masks batched on the
  device) vs a VideoMAE-style loader (a decord VideoReader per clip from the mp4 file, 16 frames at stride 4,
  multi-scale crop, resize, to-tensor and normalise frame by frame on PIL images);
- images/s: ours (libjpeg-turbo decode + crop in workers, flip/jitter/grayscale/blur/solarize batched on the
  device) vs torchvision ImageFolder + DataLoader with the same augmentations per image;
- spectrograms/s: ours (decode in workers, batched fbank on the device) vs kaldi fbank per clip in workers.
Each ratio is printed. With CUDA the device stage runs there and the GPU paths (nvjpeg, NVDEC when PyNvVideoCodec
is installed, fbank on CUDA) are measured too.

Run: `python benchmarks/pipeline.py [--workers 2] [--workdir DIR]`.
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
from typing import Callable, Iterable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLIP_FRAMES, STRIDE, SIZE = 16, 4, 224
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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


def shard(src: Path, out: Path, modality: str, gop: int | None = None) -> Path:
    """Shards the media; with `gop`, videos are transcoded to that keyframe interval (our stored format)."""
    from pipelines.sharding.samples import Transcode
    from pipelines.sharding.tool import ShardOptions, run_sharding

    if out.exists():  # media are regenerated each run, so are the shards
        shutil.rmtree(out)
    transcode = Transcode(enabled=True, short_side=256, gop=gop) if gop else Transcode()
    run_sharding(src, out, ShardOptions(modality=modality, samples_per_shard=64, transcode=transcode),
                 progress=False)
    return out / "index.json"


# -- timing ------------------------------------------------------------------------------------------------------

def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished (joined) children, e.g. loader workers."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


CPU_MS: dict[int, float] = {}  # id of the last timed iterable -> CPU ms per item


def timed(batches: Iterable, count: Callable[[object], int], skip: int = 0) -> float:
    """Items per second, from the loader's start (worker start-up included, for ours and the baselines alike).

    Also records CPU ms per item over all processes (`CPU_MS["last"]`): on a machine shared with other jobs the
    rates move with the load, the CPU cost per item much less, so it tells whether a ratio would hold on an idle
    machine where every process has its core.
    """
    done, start, cpu = 0, time.perf_counter(), _cpu_seconds()
    for i, batch in enumerate(batches):
        if i < skip:
            start, cpu = time.perf_counter(), _cpu_seconds()  # the clock starts when the skipped batches are in
            continue
        done += count(batch)
    del batches  # lets the workers finish, so their CPU time is counted
    gc.collect()
    CPU_MS["last"] = (_cpu_seconds() - cpu) * 1000 / done if done else float("nan")
    return done / (time.perf_counter() - start) if done else float("nan")


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


def byol_transforms():
    import torchvision.transforms as T

    return T.Compose([
        T.RandomResizedCrop(SIZE, scale=(0.08, 1.0)), T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), T.RandomGrayscale(0.2),
        T.RandomApply([T.GaussianBlur(23, (0.1, 2.0))], p=0.5), T.RandomSolarize(128, p=0.2),
        T.ToTensor(), T.Normalize(MEAN, STD)])


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

def ours(index: Path, stages, device_stage, device, batch: int, workers: int, n_epochs: int, count):
    from pipelines.loader import StreamLoader

    stream = StreamLoader(str(index), batch_size=batch, stages=stages, num_workers=workers, shuffle_window=64,
                          max_skip_fraction=0.0)
    outputs = (device_stage(b, device) for b in epochs(stream, n_epochs))
    rate = timed(outputs, count)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--video-frames", type=int, default=180)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--clips", type=int, default=96, help="audio clips of 10 s")
    parser.add_argument("--gop", type=int, default=0,
                        help="transcode sharded videos to this keyframe interval (0: store the source bytes)")
    parser.add_argument("--repeats", type=int, default=4, help="video clips cut from one decode (repeated sampling)")
    parser.add_argument("--only", choices=["video", "image", "audio"], default=None, help="measure one modality")
    parser.add_argument("--workdir", default=None, help="keep media and shards here (default: a temp dir)")
    args = parser.parse_args()

    from mmssl.tokens import TubeMask
    from pipelines.augment import Augment, Crop, crop_clips, crop_images
    from pipelines.device import DeviceStage
    from pipelines.fbank import Fbank
    from pipelines.images import decode_images
    from pipelines.audio import decode_audio
    from pipelines.video import decode_clips

    root = Path(args.workdir or tempfile.mkdtemp(prefix="mmssl-bench-"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:  # the device stage shares the cores with the workers: more threads only oversubscribe them
        torch.set_num_threads(1)
    print(f"workers {args.workers}, device stage on {device}, torch threads {torch.get_num_threads()}, in {root}")
    t0 = time.perf_counter()
    videos = make_videos(root / "media", args.videos, args.video_frames) if args.only in (None, "video") else []
    images = make_images(root / "media", args.images) if args.only in (None, "image") else []
    clips = make_audio(root / "media", args.clips, 10.0) if args.only in (None, "audio") else []
    # videos are stored as they come (or transcoded with --gop): measured here, a keyframe every 4 frames made
    # the files 6x larger and decoding 2.5x slower, so the default keeps the source's GOP
    kinds = (args.only,) if args.only else ("video", "image", "audio")
    idx = {m: shard(root / "media" / m, root / "shards" / m, m, (args.gop or None) if m == "video" else None)
           for m in kinds}
    print(f"media and shards made in {time.perf_counter() - t0:.1f} s")
    w, results, cpu = args.workers, {}, {}

    if "video" in kinds:
        # video: 16x4 clips, 224 crops
        view = Augment(crop=Crop(size=SIZE, scale=(0.35, 1.0), ratio=(0.75, 1.3333)))
        video_device = DeviceStage(mode="video", views=[view], mask=TubeMask(0.9))
        # one decode feeds --repeats clips at the stored size (decord's own resize costs more than it saves)
        stages = [decode_clips(num_frames=CLIP_FRAMES, stride=STRIDE, clips=args.repeats, backend="decord"),
                  crop_clips(view=view)]
        # one pass: --repeats clips from each video for ours, each video read --repeats times (a clip per read) for
        # the baseline
        results["video ours"] = ours(idx["video"], stages, video_device, device, 8, w, 1,
                                     lambda b: b["video"].batch_size)
        cpu["video ours"] = CPU_MS["last"]
        base = loader(VideoMAEClips(videos, repeats=args.repeats), 16, w)
        results["video baseline"] = timed(base, lambda b: b.shape[0])
        cpu["video baseline"] = CPU_MS["last"]
        print(f"video clips/s: ours {results['video ours']:.1f}, baseline {results['video baseline']:.1f}",
              flush=True)

    if "image" in kinds:
        # images: BYOL view augmentations
        strong = Augment(crop=Crop(size=SIZE, scale=(0.08, 1.0)), jitter=0.8, grayscale=0.2, blur=0.5,
                         solarize=0.2)
        image_device = DeviceStage(mode="image", views=[strong])
        stages = [decode_images(), crop_images(crops=[strong.crop])]
        results["image ours"] = ours(idx["image"], stages, image_device, device, 64, w, 2,
                                     lambda b: b["image"].batch_size)
        cpu["image ours"] = CPU_MS["last"]
        from torchvision.datasets import ImageFolder

        base = loader(ImageFolder(str(root / "media" / "image"), transform=byol_transforms()), 64, w)
        results["image baseline"] = timed(epochs(base, 2), lambda b: b[0].shape[0])
        cpu["image baseline"] = CPU_MS["last"]
        print(f"images/s: ours {results['image ours']:.1f}, baseline {results['image baseline']:.1f}",
              flush=True)

    if "audio" in kinds:
        # spectrograms
        audio_device = DeviceStage(mode="audio", fbank=Fbank())
        results["audio ours"] = ours(idx["audio"], [decode_audio(seconds=10.0)], audio_device, device, 32, w, 2,
                                     lambda b: b["audio"].batch_size)
        cpu["audio ours"] = CPU_MS["last"]
        results["audio baseline"] = timed(epochs(loader(KaldiClips(clips), 32, w), 2), lambda b: b.shape[0])
        cpu["audio baseline"] = CPU_MS["last"]

    if cuda and not args.only:
        gpu_paths(results, idx, w, Augment, Crop, DeviceStage, decode_images, decode_clips, view, strong, device)

    for name, value in results.items():
        print(f"{name:>24}: {value:9.1f} /s")
    for name, value in cpu.items():
        print(f"{name + ' CPU':>24}: {value:9.1f} ms per item (all processes)")
    for what, target in [(k, {"video": 2.0, "image": 1.5}.get(k)) for k in kinds]:
        ratio = results[f"{what} ours"] / results[f"{what} baseline"]
        goal = f" (target >= {target})" if target else ""
        cost = cpu[f"{what} baseline"] / cpu[f"{what} ours"]
        print(f"{what} ratio ours/baseline: {ratio:.2f}{goal}; CPU cost per item baseline/ours: {cost:.2f}")
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)


def gpu_paths(results, idx, w, Augment, Crop, DeviceStage, decode_images, decode_clips, view, strong, device):
    """nvjpeg (bytes to the device), NVDEC (plans from workers), fbank on CUDA at a large batch."""
    from pipelines.fbank import Fbank

    stage = DeviceStage(mode="image", views=[strong])
    results["image nvjpeg"] = ours(idx["image"], [decode_images(on="device")], stage, device, 256, w, 4,
                                   lambda b: b["image"].batch_size)
    try:
        import PyNvVideoCodec  # noqa: F401
    except ImportError:
        print("PyNvVideoCodec not installed: NVDEC path not measured (pip install 'mmssl[gpu]')")
    else:
        from pipelines.nvdec import NvdecDecoder

        stage = DeviceStage(mode="video", views=[view], nvdec=NvdecDecoder(decoders=4, size=(SIZE, 298)))
        plan = [decode_clips(num_frames=CLIP_FRAMES, stride=STRIDE, clips=2, backend="nvdec")]
        results["video nvdec"] = ours(idx["video"], plan, stage, device, 16, w, 3, lambda b: b["video"].batch_size)
    fbank, wave = Fbank().to(device), torch.randn(256, 160000, device=device)
    fbank(wave)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        fbank(wave)
    torch.cuda.synchronize()
    results["fbank cuda (256x10s)"] = 2560 / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
