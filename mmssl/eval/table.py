"""The comparison every evaluation prints: the checkpoint, the same architecture at random init, and the raw-input
baseline of its modality, in percent, written beside the run as CSV and JSON.

A probe's number means little alone: a tiny encoder at 72 % k-NN is worse than raw pixels at 78 %. So every eval
command fills one `Comparison` with a row per feature source and prints it as one table.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from torch import nn

__all__ = ["Row", "Comparison", "architecture", "default_out_dir"]


@dataclass(frozen=True)
class Row:
    """One feature source's scores: `name` ("checkpoint", "random init", "raw pixels", ...), `what` it is (a
    path, an architecture), and metric -> percent."""

    name: str
    what: str
    scores: dict[str, float]


@dataclass
class Comparison:
    """Rows of one evaluation on one dataset, all in percent.

    Args:
        task: what was measured, e.g. "k-NN (k=20, T=0.07) on 6000 train / 2000 val, 10 classes".
        metrics: column names in order, e.g. ["top-1", "top-5"] or ["J&F", "J", "F"].
        settings: what shaped the inputs and the probe (image size, clip length, epochs, ...), saved in the JSON.
    """

    task: str
    metrics: list[str]
    settings: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)

    def add(self, name: str, what: str, scores: dict[str, float]) -> None:
        """Adds a row; `scores` in percent, one per metric."""
        missing = [m for m in self.metrics if m not in scores]
        if missing:
            raise ValueError(f"row {name!r} lacks {missing}")
        self.rows.append(Row(name, what, {m: float(scores[m]) for m in self.metrics}))

    def format(self) -> str:
        """The table as text: a title line, a header, one line per row, percent with one decimal."""
        width = max([len(r.name) for r in self.rows] + [len("encoder")])
        cols = [max(len(m), 6) for m in self.metrics]
        head = "  ".join([f"{'encoder':<{width}}"] + [f"{m:>{c}}" for m, c in zip(self.metrics, cols)] + ["what"])
        lines = [self.task, head]
        for r in self.rows:
            vals = [f"{_pct(r.scores[m]):>{c}}" for m, c in zip(self.metrics, cols)]
            lines.append("  ".join([f"{r.name:<{width}}"] + vals + [r.what]))
        return "\n".join(lines)

    def write(self, out_dir: str | Path, stem: str) -> tuple[Path, Path]:
        """Writes `<stem>.csv` (a row per source) and `<stem>.json` (task, settings, rows) into `out_dir`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = out / f"{stem}.csv", out / f"{stem}.json"
        with open(csv_path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["encoder", "what", *self.metrics])
            for r in self.rows:
                writer.writerow([r.name, r.what, *(round(r.scores[m], 4) for m in self.metrics)])
        json_path.write_text(json.dumps({"task": self.task, "metrics": self.metrics, "settings": self.settings,
                                         "rows": [{"encoder": r.name, "what": r.what, **r.scores}
                                                  for r in self.rows]}, indent=2, default=str))
        return csv_path, json_path


def _pct(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def architecture(encoder: nn.Module, config: Mapping[str, Any] | None) -> str:
    """A short name of an encoder's architecture, e.g. "vit_tiny_patch16_224 depth 4" or "CPCAudioEncoder"."""
    name = getattr(encoder, "name", None) or type(encoder).__name__
    depth = getattr(encoder, "depth", None)
    return f"{name} depth {depth}" if isinstance(depth, int) and (config or {}).get("depth") else str(name)


def default_out_dir(checkpoint: Path | None) -> Path:
    """Beside the run: `<run_dir>/eval` for `<run_dir>/checkpoints/x.pt`, else `eval/` next to the checkpoint,
    else `eval/` in the working folder."""
    if checkpoint is None:
        return Path("eval")
    folder = Path(checkpoint).resolve().parent
    return (folder.parent if folder.name == "checkpoints" else folder) / "eval"
