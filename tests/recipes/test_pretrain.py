import json
import math
from pathlib import Path

import pytest

from recipes.pretrain import pretrain


def test_smoke_run_writes_checkpoint_log_and_curve(image_shards: Path, tmp_path: Path, mae_config) -> None:
    summary = pretrain(mae_config(image_shards, tmp_path))
    run = Path(summary["run_dir"])
    assert summary["steps"] == 6 and (run / "checkpoints" / "last.pt").is_file()
    assert (run / "loss.png").is_file() and (run / "config.yaml").is_file()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 7)) and all(r["loss"] > 0 for r in lines)
    # every line says how fast the run goes and how much of its time it waited for data
    assert all(r["samples_per_s"] > 0 and 0.0 <= r["data_wait"] <= 1.0 and r["skipped"] == 0 for r in lines)
    assert 0.0 <= summary["data_wait"] <= 1.0
    # the warmup, worked out from the config (tiny_mae: blr 1e-3, batch 4, warmup_epochs 1 of epochs 4, steps 6):
    # lr = blr * batch / 256 (the linear scaling rule), warmup = 1/4 of the run's progress, and step k (1-based)
    # runs at progress (k - 1) / 6, so step 1 runs at lr 0 and step 2 at base * (1/6) / (1/4)
    base = 1e-3 * 4 / 256
    assert lines[0]["lr"] == 0.0  # exactly: the warmup starts from zero
    # 1e-12 relative: the schedule may order its float operations differently (an ulp is ~1e-16 here); a wrong
    # warmup length, batch scaling or step offset moves the value by 1/6 or more
    assert math.isclose(lines[1]["lr"], base * (1 / 6) / (1 / 4), rel_tol=1e-12), lines[1]["lr"]


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_resume(image_shards: Path, tmp_path: Path, mae_config, workers: int) -> None:
    """Also with the device stage in two loader workers (the CPU feed): the position saved is the step's."""
    tiny_mae = lambda shards, out, **train: mae_config(shards, out, workers=workers, **train)  # noqa: E731
    whole = pretrain(tiny_mae(image_shards, tmp_path / "a", steps=8, ckpt_every=0))
    cut = pretrain(tiny_mae(image_shards, tmp_path / "b", steps=8, stop_after=4))
    assert cut["steps"] == 4
    resumed = pretrain(tiny_mae(image_shards, tmp_path / "b", steps=8), resume="auto")
    assert resumed["run_dir"] == cut["run_dir"] and resumed["steps"] == 8

    def losses(run: str) -> list[float]:
        return [json.loads(line)["loss"] for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]

    a, b = losses(whole["run_dir"]), losses(resumed["run_dir"])
    assert len(a) == len(b) == 8
    # the same batches, RNG and kernels: measured bit-exact; 1e-6 is ~8 float32 ulps of losses ~1.04, room only for
    # the metrics' JSON float formatting
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6, (a, b)
