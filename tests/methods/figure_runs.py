"""Runs a shipped config for one step through `recipes.pretrain.pretrain` with figures asked for (`figure_every=0`:
one at the end), and returns the PNGs the run wrote."""

from __future__ import annotations

from pathlib import Path

import torch
from config_runs import CONFIGS, image_shards

from mmssl.config import load_config
from recipes.pretrain import pretrain

__all__ = ["figures_of"]


def figures_of(name: str, root: Path) -> list[Path]:
    """Trains `recipes/configs/<name>.yaml` one step on tiny image shards under `root`; the figure PNGs written."""
    cfg = load_config(CONFIGS / f"{name}.yaml", [
        f"data.train.source={image_shards(root)}", "data.train.batch_size=2", "data.train.num_workers=0",
        "data.train.shuffle_window=4"])
    cfg["train"] = {"steps": 1, "log_every": 1, "ckpt_every": 0, "figure_every": 0, "out_dir": str(root / "runs"),
                    "progress": False, "tensorboard": False, "device": "cpu", "name": name.replace("/", "_")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = pretrain(cfg)
    finally:
        torch.set_num_threads(threads)
    return sorted((Path(summary["run_dir"]) / "figures").glob("*.png"))
