"""Every method's probe margin in one table: tiny configs pretrained for a fixed budget, then probed beside a seeded
random init of the same architecture and the raw input.

Run: python benchmarks/probe.py [--configs image/mae_tiny video/videomae_tiny ...] [--steps 250] [--probe knn]
                                [--batch-size N] [--lr LR] [--data DIR] [--out FILE.json] [--markdown]

Data: labelled synthetic media made here (`benchmarks/probe_data.py`; no downloads): images whose class is a shape's
kind, videos whose class is a motion direction, audio whose class is a pitch contour, each with a random nuisance
(place, scale, colour, texture, speed, base pitch, timbre, noise). Per modality an unlabelled pretraining split and
labelled train / val splits (4 classes, balanced) are sharded once and shared by every config of that modality.
Each config is trained by `recipes.pretrain.pretrain` (its own recipe, optimiser and augmentations; only the data
source, batch size, workers and step budget are set here) on the CPU, and its checkpoint probed by
`recipes.compare.probe_comparison` (k-NN by default, DINO's weighted vote). The table gives top-1 of the trained
encoder, its random twin and the raw input (16x16 pixels, clip pixels or mean MFCC), and the trained one's margin
over each, in percent points. `--markdown` prints the rows as a Markdown table (BENCHMARKS.md, README); `--out`
writes them as JSON and CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.probe_data import CLASSES, SplitSizes, Splits, write_splits  # noqa: E402
from mmssl.config import load_config  # noqa: E402
from mmssl.discover import config_root  # noqa: E402
from recipes.compare import ProbeSettings, probe_comparison  # noqa: E402
from mmssl.eval.table import Comparison  # noqa: E402
from recipes.pretrain import pretrain  # noqa: E402

__all__ = ["DEFAULT_CONFIGS", "SIZES", "Result", "modality_of", "pretrain_config", "probe_config", "table_text",
           "table_markdown", "main"]

DEFAULT_CONFIGS = ["image/mae_tiny", "image/simclr_tiny", "image/dino_tiny", "image/rotation_tiny",
                   "video/videomae_tiny", "audio/audiomae_tiny", "audio/cpc_tiny"]
# a few hundred labelled samples per modality; video and audio fewer, as each costs more to decode and embed
SIZES = {"image": SplitSizes(pretrain=512, train=240, val=240), "video": SplitSizes(pretrain=128, train=96, val=96),
         "audio": SplitSizes(pretrain=256, train=120, val=120)}
COLUMNS = ["config", "modality", "steps", "batch", "trained", "random", "raw", "trained - random", "trained - raw"]


@dataclass(frozen=True)
class Result:
    """One config's row: top-1 in percent of the trained encoder, its random twin and the raw input."""

    config: str
    modality: str
    steps: int
    batch_size: int
    trained: float
    random: float
    raw: float
    raw_name: str
    first_loss: float
    last_loss: float
    train_s: float
    probe_s: float

    @property
    def over_random(self) -> float:
        return self.trained - self.random

    @property
    def over_raw(self) -> float:
        return self.trained - self.raw


def modality_of(config: str) -> str:
    """The data modality a shipped config trains on, from its folder ("image/...", "video/...", "audio/...")."""
    folder = config.split("/", 1)[0]
    if folder not in CLASSES:
        raise ValueError(f"config {config!r}: benchmarks/probe.py runs image/, video/ and audio/ configs")
    return folder


def pretrain_config(config: str, shards: Path, out_dir: Path, *, steps: int, batch_size: int | None = None,
                    lr: float | None = None, seed: int = 0) -> dict:
    """Trains `recipes/configs/<config>.yaml` for `steps` steps on `shards` on the CPU; returns pretrain's summary.

    Args:
        config: a shipped config name, e.g. "image/mae_tiny".
        shards: unlabelled pretraining shards.
        out_dir: where the run folder is made.
        steps: optimiser steps (the config's schedule is compressed into them).
        batch_size: samples per step; None keeps the config's.
        lr: a fixed base learning rate instead of the config's (scaled) one; None keeps the config's.
        seed: model-init and data seed.
    """
    overrides = [f"data.train.source={shards}", "data.train.num_workers=2", f"data.train.seed={seed}"]
    if batch_size is not None:
        overrides.append(f"data.train.batch_size={batch_size}")
    if lr is not None:
        overrides.append(f"optim.lr={lr}")
    cfg = load_config(config_root() / f"{config}.yaml", overrides)
    cfg["train"] = {"steps": steps, "seed": seed, "log_every": max(1, steps // 10), "ckpt_every": 0,
                    "figure_every": -1, "out_dir": str(out_dir), "progress": False, "tensorboard": False,
                    "device": "cpu", "name": config.replace("/", "_")}
    return pretrain(cfg)


def probe_config(checkpoint: Path, splits: Splits, *, probe: str = "knn", seed: int = 0,
                 log: Callable[[str], None] = lambda line: None) -> Comparison:
    """The three-row comparison (checkpoint, random init, raw input) of `checkpoint` on the labelled splits."""
    settings = ProbeSettings(probe=probe, train=str(splits.train), val=str(splits.val), checkpoint=checkpoint,
                             seed=seed, batch_size=32, workers=2, device="cpu")
    return probe_comparison(settings, log=log)


def _top1(table: Comparison) -> tuple[float, float, float, str]:
    """(trained, random, raw, raw row name) top-1 from a filled comparison."""
    rows = {r.name: r.scores["top-1"] for r in table.rows}
    raw = [r for r in table.rows if r.name not in ("checkpoint", "random init")]
    if "checkpoint" not in rows or "random init" not in rows or len(raw) != 1:
        raise ValueError(f"expected checkpoint, random init and one raw row, got {[r.name for r in table.rows]}")
    return rows["checkpoint"], rows["random init"], raw[0].scores["top-1"], raw[0].name


def _cells(r: Result) -> list[str]:
    return [r.config, r.modality, str(r.steps), str(r.batch_size), f"{r.trained:.1f}", f"{r.random:.1f}", f"{r.raw:.1f}",
            f"{r.over_random:+.1f}", f"{r.over_raw:+.1f}"]


def table_text(results: list[Result], *, title: str = "") -> str:
    """The results as an aligned text table (top-1 and margins in percent points)."""
    rows = [COLUMNS] + [_cells(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [title] if title else []
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def table_markdown(results: list[Result]) -> str:
    """The results as a Markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * 2 + "---:|" * (len(COLUMNS) - 2)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in results]
    return "\n".join(lines)


def _write(results: list[Result], out: Path, command: dict) -> None:
    """`out` as JSON (the run's settings and rows) and the same rows as CSV beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**asdict(r), "trained - random": r.over_random, "trained - raw": r.over_raw} for r in results]
    out.write_text(json.dumps({"settings": command, "rows": rows}, indent=2))
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _splits(data: Path, modality: str, seed: int, *, scale: float) -> Splits:
    """The modality's shards under `data`, written on first use (a finished folder is reused)."""
    root = data / modality
    if (root / "val" / "index.json").exists():
        return Splits(pretrain=root / "pretrain", train=root / "train", val=root / "val")
    s = SIZES[modality]
    sizes = SplitSizes(*(max(8, int(n * scale)) for n in (s.pretrain, s.train, s.val)))
    start = time.perf_counter()
    splits = write_splits(root, modality, sizes, seed=seed)
    print(f"{modality}: wrote {sizes.pretrain} pretraining / {sizes.train} train / {sizes.val} val samples, "
          f"{len(CLASSES[modality])} classes ({', '.join(CLASSES[modality])}) in {time.perf_counter() - start:.0f} s",
          flush=True)
    return splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="shipped configs (image/, video/, audio/)")
    parser.add_argument("--steps", type=int, default=250, help="optimiser steps per config (default 250: the "
                        "default run takes ~15 min on 2 CPU cores)")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per step (default: each config's)")
    parser.add_argument("--lr", type=float, default=None, help="a fixed learning rate (default: each config's)")
    parser.add_argument("--probe", choices=["knn", "linear"], default="knn")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the training and the random init")
    parser.add_argument("--data", type=Path, default=None, help="folder for the synthetic shards, reused when "
                        "present (default: a temporary folder)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every split's sample count")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here and as CSV beside it")
    parser.add_argument("--markdown", action="store_true", help="also print the rows as a Markdown table")
    parser.add_argument("--verbose", action="store_true", help="print each config's full comparison table")
    args = parser.parse_args(argv)
    for config in args.configs:  # every name checked before any data is written or any step is run
        modality_of(config)
        if not (config_root() / f"{config}.yaml").is_file():
            parser.error(f"no config {config!r} under {config_root()}")
    torch.manual_seed(args.seed)
    print(f"probe benchmark: {len(args.configs)} configs, {args.steps} steps each, {args.probe} probe, seed "
          f"{args.seed}, {torch.get_num_threads()} threads", flush=True)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="probe-bench-") as tmp:
        data = args.data or Path(tmp) / "data"
        for config in args.configs:
            modality = modality_of(config)
            splits = _splits(data, modality, args.seed, scale=args.scale)
            start = time.perf_counter()
            summary = pretrain_config(config, splits.pretrain, Path(tmp) / "runs", steps=args.steps,
                                      batch_size=args.batch_size, lr=args.lr, seed=args.seed)
            trained_s, start = time.perf_counter() - start, time.perf_counter()
            table = probe_config(Path(summary["checkpoint"]), splits, probe=args.probe, seed=args.seed,
                                 log=print if args.verbose else lambda line: None)
            if args.verbose:
                print(table.format())
            trained, random, raw, raw_name = _top1(table)
            cfg = load_config(config_root() / f"{config}.yaml")
            batch = args.batch_size or int(cfg["data"]["train"]["batch_size"])
            results.append(Result(config=config, modality=modality, steps=summary["steps"], batch_size=batch,
                                  trained=trained, random=random, raw=raw, raw_name=raw_name,
                                  first_loss=summary["first_loss"], last_loss=summary["last_loss"],
                                  train_s=trained_s, probe_s=time.perf_counter() - start))
            r = results[-1]
            print(f"{config}: {r.steps} steps x {batch} in {r.train_s:.0f} s (loss {r.first_loss:.3f} -> "
                  f"{r.last_loss:.3f}), {args.probe} top-1 trained {trained:.1f} / random {random:.1f} / "
                  f"{raw_name} {raw:.1f} ({r.probe_s:.0f} s)", flush=True)
    title = (f"{args.probe} top-1 (%) on the synthetic 4-class val splits: trained vs random init vs raw input "
             f"(raw: 16x16 pixels, clip pixels 4x8x8, mean MFCC)")
    print(table_text(results, title=title))
    if args.markdown:
        print(table_markdown(results))
    if args.out:
        _write(results, args.out, {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})
        print(f"wrote {args.out} and {args.out.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
