import math
from pathlib import Path

import pytest

from recipes.quickstart import quickstart


@pytest.mark.slow
def test_quickstart_runs_end_to_end(tmp_path: Path, capsys) -> None:
    result = quickstart(tmp_path, overrides=["train.steps=3", "train.log_every=1", "data.train.batch_size=8"],
                        videos=8, workers=0)
    out = capsys.readouterr().out
    assert "SiamMAE (trained)" in out and "copy the first-frame mask" in out and "run folder" in out
    assert "of the training time waiting for data" in out and 0.0 <= result["data_wait"] <= 1.0
    scores = result["scores"]
    assert set(scores) == {"SiamMAE (trained)", "same encoder, random init", "copy the first-frame mask"}
    assert all(0.0 <= s["J&F"] <= 1.0 and not math.isnan(s["J&F"]) for s in scores.values())
    run = Path(result["run_dir"])
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "loss.png").is_file()
    assert any((run / "propagation").rglob("*.png"))
