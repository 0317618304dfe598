"""End-to-end pretraining throughput from shards on one GPU, against the same step fed synthetic device tensors.

For MAE ViT-B/16 (JPEG shards) and VideoMAE ViT-B (H.264 shards stored at 320x240, short side <= 320) the step
is ours from `benchmarks/steps.py` (bf16 autocast, fused AdamW, compiled, no host syncs). It runs
1. on synthetic batches already on the device: the rate the GPU allows;
2. fed from shards through the StreamLoader (worker processes, pinned memory, worker prefetch) and the device
   stage, run a few batches ahead in a thread on its own CUDA stream (`benchmarks/gpu_feed.py`):
   - MAE: "nvjpeg": JPEG bytes go to the device stage, batch-decoded by nvjpeg, cropped and flipped on the GPU;
     "cpu-decode": libjpeg-turbo decode and crop in the workers, flip on the GPU;
   - VideoMAE: "nvdec": workers only plan the frames, PyNvVideoCodec decodes each video once for --repeats clips
     in several decoder sessions (`pipelines.nvdec`), crops and flips on the GPU; "decord": decord decodes in the
     workers, once per video for --repeats clips, crop and flip in the workers.
The ratio shards / synthetic is the fraction of time the GPU is not waiting for data (target >= 0.9). Without
PyNvVideoCodec the NVDEC path is reported as not measured; on a CPU it runs its plans through PyAV (logic only).

Media are made here with benchmarks/pipeline.py's makers (or beforehand with `--prepare`, on a machine with
PyAV, and carried): a few distinct files, sharded once; the shard list is repeated so the timed steps fit in one
epoch.

Run: `python benchmarks/pipeline_gpu.py [--workdir DIR]` (GPU, all cores); `--prepare --workdir DIR` only makes the
media and shards; `--tiny --device cpu` runs tiny configs in seconds.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_feed import DevicePrefetcher, StreamedNvdec  # noqa: E402
from benchmarks.pipeline import make_images, make_videos, shard  # noqa: E402
from benchmarks.steps import SPECS, Batch, OursStep, Spec, build_ours, make_batches, sync  # noqa: E402

__all__ = ["feeds", "media_shards", "repeated", "measure", "main"]

STRIDE = {"videomae": 4, "videomae-tiny": 2}
SOURCE_FRAMES = {"videomae": 150, "videomae-tiny": 24}


def importable(name: str) -> bool:
    """Whether a module (PyNvVideoCodec, decord) can be imported."""
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def media_shards(root: Path, key: str, *, distinct: int) -> Path:
    """The index of shards holding `distinct` made media for model `key`, under root/shards/key; shards already
    there are reused (made on another machine with `--prepare`, they need no PyAV where they are read)."""
    spec = SPECS[key]
    kind = spec.modality.name
    index = root / "shards" / key / "index.json"
    if index.is_file():
        return index
    src = root / "media" / key
    if spec.video:
        make_videos(src, distinct, SOURCE_FRAMES[key])
    else:
        make_images(src, distinct)
    index = shard(src / kind, root / "shards" / key, kind)
    shutil.rmtree(src)  # the shards hold the bytes; the folder to carry stays small
    return index


def repeated(index: Path, samples: int) -> list[str]:
    """The index's shard paths, repeated until they hold `samples` samples: the timed steps then fit in one epoch
    (an epoch boundary restarts the workers, which a real dataset would rarely do)."""
    from pipelines.shards import resolve_shards

    shards = resolve_shards(str(index))
    return list(shards.urls) * max(1, math.ceil(samples / shards.total))


def feeds(spec: Spec, *, key: str, device: torch.device, repeats: int, decoders: int, nvdec: bool,
          jpeg: str, decord: bool = True) -> dict[str, tuple[list, Any, str]]:
    """The shard feeds to measure: name -> (worker stages, device stage, description)."""
    from mmssl.tokens import RandomMask, TubeMask
    from pipelines.augment import Augment, Crop, crop_clips, crop_images
    from pipelines.device import DeviceStage
    from pipelines.images import decode_images
    from pipelines.video import decode_clips

    out: dict[str, tuple[list, Any, str]] = {}
    if not spec.video:
        # MAE's augmentation: RandomResizedCrop(scale 0.2-1) and a flip (image/mae_vit_base.yaml)
        view = Augment(crop=Crop(size=spec.size, scale=(0.2, 1.0)), flip=0.5)
        stage = DeviceStage(mode="image", views=[view], mask=RandomMask(spec.mask_ratio))
        if jpeg in ("device", "both"):
            where = "nvjpeg batch decode" if device.type == "cuda" else "bytes decoded in the device stage (CPU)"
            out["nvjpeg"] = ([decode_images(on="device")], stage, f"{where}, crop + flip on {device.type}")
        if jpeg in ("worker", "both"):
            out["cpu-decode"] = ([decode_images(), crop_images(crops=[view.crop])], stage,
                                 f"libjpeg-turbo decode + crop in workers, flip on {device.type}")
        return out
    # VideoMAE's augmentation: multi-scale crop (area 0.44-1) and a flip (video/videomae_vit_base.yaml)
    view = Augment(crop=Crop(size=spec.size, scale=(0.44, 1.0)), flip=0.5)
    clip = dict(num_frames=spec.frames, stride=STRIDE[key], clips=repeats)
    if nvdec:
        stage = DeviceStage(mode="video", views=[view], mask=TubeMask(spec.mask_ratio),
                            nvdec=StreamedNvdec(decoders=decoders))
        where = f"NVDEC, {decoders} decoder sessions" if device.type == "cuda" else "NVDEC plans decoded by PyAV (CPU)"
        out["nvdec"] = ([decode_clips(backend="nvdec", **clip)], stage,
                        f"{where}, one decode for {repeats} clips, crop + flip on {device.type}")
    if not decord:
        return out
    stage = DeviceStage(mode="video", views=[view], mask=TubeMask(spec.mask_ratio))
    out["decord"] = ([decode_clips(backend="decord", **clip), crop_clips(view=view)], stage,
                     f"decord in workers, one decode for {repeats} clips, crop + flip in workers")
    return out


def _as_batch(out: dict, name: str) -> Batch:
    """The step's input: only the key the method reads, so the compiled step sees the dict the synthetic batches
    have (other keys would be new guards, and a recompilation)."""
    return Batch({name: out[name]}, None, out[name].batch_size)


def measure(step: OursStep, batches: Iterable[Batch], *, steps: int, warmup: int,
            device: torch.device) -> tuple[float, int]:
    """Samples per second over `steps` steps after `warmup`; and how many steps ran (fewer if the feed ended)."""
    it = iter(batches)
    for _ in range(warmup):
        step(next(it))
    sync(device)
    start, done, ran = time.perf_counter(), 0, 0
    for batch in itertools.islice(it, steps):
        step(batch)
        done, ran = done + batch.size, ran + 1
    sync(device)
    return (done / (time.perf_counter() - start) if ran else math.nan), ran


def measure_feed(step: OursStep, source: list[str], stages: list, stage: Any, args: argparse.Namespace,
                 device: torch.device, per_load: int, name: str) -> tuple[float, str, str]:
    """The shard-fed rate of one feed; a note on the prefetch thread; the loader's stats."""
    from pipelines.loader import StreamLoader

    loader = StreamLoader(source, batch_size=per_load, stages=stages, num_workers=args.workers, shuffle_window=64,
                          pin_memory=device.type == "cuda", prefetch_factor=4, max_skip_fraction=0.0)
    made = DevicePrefetcher(loader, stage, device, depth=2) if args.prefetch else (stage(b, device) for b in loader)
    start = time.perf_counter()
    try:
        rate, ran = measure(step, (_as_batch(b, name) for b in made), steps=args.steps, warmup=args.warmup,
                            device=device)
    finally:
        if isinstance(made, DevicePrefetcher):
            made.close()
    wall = time.perf_counter() - start
    extra = ""
    if isinstance(made, DevicePrefetcher):
        extra = f", device stage busy {made.produced_s / wall:.0%} of the time, step waited {made.waited_s / wall:.0%}"
    if ran < args.steps:
        extra += f"; warning: the feed ended after {ran} timed steps"
    return rate, extra, loader.stats.summary()


def run_model(key: str, args: argparse.Namespace, device: torch.device, root: Path) -> list[dict[str, Any]]:
    """Synthetic and shard-fed rates of one model; prints them and returns rows."""
    spec = SPECS[key]
    batch = args.batch.get(spec.method) or spec.batch
    cuda = device.type == "cuda"
    per_load = batch // args.repeats if spec.video else batch  # videos (or images) per loader batch
    t0 = time.perf_counter()
    name = spec.modality.name
    index = media_shards(root, key, distinct=args.distinct)
    # the timed and warm-up steps, and the batches prefetched by the workers and the device stage, in one epoch
    source = repeated(index, per_load * (args.warmup + args.steps + 4 + 4 * args.workers))
    print(f"\n== {key}: batch {batch}, {args.workers} workers, {args.distinct} distinct {name}s in shards repeated "
          f"to {len(source)} shard reads (ready in {time.perf_counter() - t0:.1f} s)", flush=True)

    step = OursStep(build_ours(spec).to(device), device=device, amp=torch.bfloat16 if cuda else None,
                    compile=args.compile)
    synthetic = make_batches(spec, batch, 2, device)
    rate, _ = measure(step, itertools.cycle(synthetic), steps=args.steps, warmup=args.warmup, device=device)
    rows = [{"model": key, "feed": "synthetic", "rate": rate, "ratio": 1.0,
             "what": f"tensors already on {device.type}"}]
    print(f"  synthetic: {rate:.1f} samples/s (compile {args.compile})", flush=True)
    nvdec = args.nvdec == "on" or (args.nvdec == "auto" and (not cuda or importable("PyNvVideoCodec")))
    decord = importable("decord")
    if spec.video and not nvdec:
        print("  nvdec: not measured (PyNvVideoCodec not installed: pip install 'mmssl[gpu]')", flush=True)
    if spec.video and not decord:
        print("  decord: not measured (decord not installed)", flush=True)
    for feed, (stages, stage, what) in feeds(spec, key=key, device=device, repeats=args.repeats,
                                            decoders=args.decoders, nvdec=nvdec, jpeg=args.jpeg,
                                            decord=decord).items():
        try:
            rate, extra, stats = measure_feed(step, source, stages, stage, args, device, per_load, name)
        except Exception as err:  # noqa: BLE001 - one failing feed (a decoder crash) must not hide the others
            rate, extra, stats = math.nan, "", f"FAILED: {type(err).__name__}: {err}"
        rows.append({"model": key, "feed": feed, "rate": rate, "ratio": rate / rows[0]["rate"], "what": what})
        print(f"  {feed} ({what}): {rate:.1f} samples/s = {rows[-1]['ratio']:.2f} of synthetic{extra}; "
              f"loader {stats}", flush=True)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["mae", "videomae", "both"], default="both")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help="tiny models and media: seconds on a CPU")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: cores - 2)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, worker start)")
    parser.add_argument("--mae-batch", type=int, default=None, help="images per step (default 256)")
    parser.add_argument("--videomae-batch", type=int, default=None, help="clips per step (default 32)")
    parser.add_argument("--repeats", type=int, default=2, help="clips per decoded video (repeated sampling)")
    parser.add_argument("--decoders", type=int, default=4, help="NVDEC decoder sessions in parallel")
    parser.add_argument("--nvdec", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--jpeg", choices=["device", "worker", "both"], default="both",
                        help="MAE feeds: nvjpeg in the device stage, decode in workers, or both")
    parser.add_argument("--distinct", type=int, default=None, help="distinct media files made (default 64/tiny 4)")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--no-prefetch", dest="prefetch", action="store_false",
                        help="run the device stage in the main thread instead of a prefetch thread")
    parser.add_argument("--workdir", default=None, help="keep media and shards here (default: a temp dir)")
    parser.add_argument("--prepare", action="store_true", help="only make the media and shards (in --workdir)")
    args = parser.parse_args(argv)
    if args.prepare and not args.workdir:
        parser.error("--prepare needs --workdir (where the shards are kept)")
    args.batch = {"mae": args.mae_batch, "videomae": args.videomae_batch}
    if args.workers is None:
        args.workers = 1 if args.tiny else max(1, (os.cpu_count() or 2) - 2)
    if args.distinct is None:
        args.distinct = 4 if args.tiny else 64
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark; returns one row per (model, feed)."""
    args = parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # the workers have the other cores
    root = Path(args.workdir or tempfile.mkdtemp(prefix="mmssl-pipeline-gpu-"))
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    nvdec = "available" if importable("PyNvVideoCodec") else "not installed"
    print(f"device {device} ({what}), {os.cpu_count()} cores, torch {torch.__version__}, NVDEC {nvdec}, "
          f"device prefetch {args.prefetch}, in {root}", flush=True)
    rows: list[dict[str, Any]] = []
    keys = [f"{m}-tiny" if args.tiny else m for m in (["mae", "videomae"] if args.model == "both" else [args.model])]
    if args.prepare:
        for key in keys:
            print(f"{key}: {media_shards(root, key, distinct=args.distinct)}")
        return rows
    try:
        for key in keys:
            rows += run_model(key, args, device, root)
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print("\nmodel          feed         samples/s  of synthetic")
    for r in rows:
        goal = "  (target >= 0.9)" if r["feed"] != "synthetic" else ""
        print(f"{r['model']:<14} {r['feed']:<11} {r['rate']:10.1f} {r['ratio']:13.2f}{goal}")
    return rows


if __name__ == "__main__":
    main()
