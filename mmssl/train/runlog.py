"""Run folders and metric logs: metrics.jsonl always, TensorBoard when it is installed."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RunLog", "make_run_dir"]


def make_run_dir(root: str | Path, name: str) -> Path:
    """A new folder root/name-YYYYmmdd-HHMMSS (suffixed when it exists)."""
    base = Path(root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        path, n = Path(f"{base}-{n}"), n + 1
    path.mkdir(parents=True)
    return path


class RunLog:
    """Writes the resolved config and one JSON line per logged step; mirrors scalars to TensorBoard if present.

    Args:
        run_dir: the run folder.
        enabled: False on ranks other than 0 (they log nothing).
        tensorboard: try to log to TensorBoard as well.
    """

    def __init__(self, run_dir: Path, *, enabled: bool = True, tensorboard: bool = True) -> None:
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.history: list[dict[str, Any]] = []
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:  # the tensorboard extra is not installed: the JSONL log is enough
                self._tb = None

    def save_config(self, cfg: dict) -> None:
        if self.enabled:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    def log(self, step: int, values: dict[str, float]) -> None:
        """Appends {step, **values} to metrics.jsonl (and TensorBoard)."""
        record = {"step": step, **values}
        self.history.append(record)
        if not self.enabled:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)

    def load(self) -> None:
        """Reads an existing metrics.jsonl back (a resumed run continues its history).

        A line that does not parse (the torn last line a full disk or a kill leaves) is dropped with a warning;
        `truncate` then rewrites the file without it.
        """
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        self.history, torn = [], 0
        for line in path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                torn += 1
                continue
            if isinstance(record, dict) and "step" in record:
                self.history.append(record)
        if torn:
            warnings.warn(f"{path}: dropped {torn} unreadable line(s) (a write cut short); the run continues")

    def truncate(self, step: int) -> None:
        """Drops records after `step` (logged by a run that died after its last checkpoint)."""
        self.history = [r for r in self.history if r["step"] <= step]
        if self.enabled:
            with open(self.run_dir / "metrics.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.history)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
