"""Sharding throughput: files/s and MB/s of `mmssl shard`, copy-only and with transcoding, on generated media.

Run: python benchmarks/shard.py [--videos 24] [--images 300] [--workers 2]
Prints one line per (modality, mode). The media are made here: H.264 videos (320x240, 5 s, GOP 12) and JPEGs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from media import make_image, make_video  # noqa: E402

from pipelines.sharding.samples import Transcode  # noqa: E402
from pipelines.sharding.tool import ShardOptions, run_sharding  # noqa: E402


def _measure(src: Path, out: Path, opts: ShardOptions) -> tuple[float, int, int]:
    files = [p for p in src.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    t0 = time.perf_counter()
    run_sharding(src, out, opts, progress=False)
    return time.perf_counter() - t0, len(files), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "video" / "c").mkdir(parents=True)
        (root / "image" / "c").mkdir(parents=True)
        for i in range(args.videos):
            make_video(root / "video" / "c" / f"{i}.mp4", frames=120, width=320, height=240, fps=24, gop=12)
        for i in range(args.images):
            make_image(root / "image" / "c" / f"{i}.jpg", width=500, height=375, seed=i)
        runs = [
            ("video", "copy", Transcode()),
            ("video", "transcode short side 128, GOP 16", Transcode(enabled=True, short_side=128, gop=16)),
            ("image", "copy", Transcode()),
            ("image", "transcode JPEG short side 256", Transcode(enabled=True, image_short_side=256)),
        ]
        print(f"workers={args.workers}")
        for n, (modality, mode, transcode) in enumerate(runs):
            count = args.videos if modality == "video" else args.images
            # several shards per worker, so the workers share the job
            per_shard = max(2, count // (4 * max(args.workers, 1)))
            opts = ShardOptions(modality=modality, samples_per_shard=per_shard, workers=args.workers,
                                transcode=transcode)
            seconds, files, size = _measure(root / modality, root / f"out{n}", opts)
            print(f"{modality:<6} {mode:<34} {files:>5} files {size / 2**20:7.1f} MB  {seconds:6.2f} s  "
                  f"{files / seconds:8.1f} files/s  {size / 2**20 / seconds:7.1f} MB/s")


if __name__ == "__main__":
    main()
