from pathlib import Path

import pytest
import yaml

from mmssl.cli import main


@pytest.fixture
def config_file(image_shards: Path, tmp_path: Path, mae_config) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(mae_config(image_shards, tmp_path / "runs", steps=2)))
    return path


@pytest.mark.parametrize("override,message", [
    ("method.encoder.deptth=2", "'method.encoder.deptth' is not an argument of TokenEncoder. Did you mean 'depth'"),
    ("train.stepz=3", "'train.stepz' is unknown. Did you mean 'steps'"),
    ("method._component_=mmssl.methods.nope.Nope", "cannot import 'mmssl.methods.nope.Nope'"),
    ("data.train.source=/nonexistent/shards", "/nonexistent/shards"),
])
def test_user_mistakes_print_one_line(config_file: Path, capsys, override: str, message: str) -> None:
    assert main(["image", "pretrain", "--config", str(config_file), override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_unknown_config_name(capsys) -> None:
    assert main(["image", "pretrain", "--config", "no_such_config"]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_runs_a_config_file(config_file: Path, capsys) -> None:
    assert main(["image", "pretrain", "--config", str(config_file), "train.log_every=2"]) == 0
    assert "done: 2 steps" in capsys.readouterr().out
