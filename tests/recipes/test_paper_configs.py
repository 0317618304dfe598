"""Every paper-scale config under recipes/configs runs 2 steps on the CPU with its tiny override
(recipes/tiny_overrides.yaml), on small synthetic shards of the kind its pipeline reads; the override lists only
shrink keys the config has; `--tiny` fails in one line for a config without a list."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "methods"))  # config_runs.py
sys.path.append(str(Path(__file__).resolve().parents[1] / "eval"))  # speech_data.py

from config_runs import (audio_shards, av_shards, check_first_loss, image_shards, multimodal_shards,  # noqa: E402
                         video_shards)

from mmssl.config import COMPONENT, ConfigError, apply_overrides, load_config, section, validate  # noqa: E402
from recipes.pretrain import TINY_OVERRIDES, main, pretrain, tiny_overrides  # noqa: E402
from recipes.settings import OptimSettings  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"
TINY_SCALE = ("_tiny", "_quickstart")  # configs small already; every other config is paper-scale
PAPER = sorted(f"{p.parent.name}/{p.stem}" for p in CONFIGS.glob("*/*.yaml") if not p.stem.endswith(TINY_SCALE))


def _table() -> dict[str, list[str]]:
    return yaml.safe_load(TINY_OVERRIDES.read_text())


def _child(node: Any, part: str) -> tuple[bool, Any]:
    """(whether `node` has `part`, the child): a mapping key or a list index."""
    if isinstance(node, dict):
        return part in node, node.get(part)
    if isinstance(node, list) and part.isdigit():
        return int(part) < len(node), node[int(part)] if int(part) < len(node) else None
    return False, None


def _data_kind(cfg: dict) -> str:
    """Which synthetic shards a config reads, from its loader, device stage and decode stage."""
    train, device = cfg["data"]["train"], cfg["data"].get("device") or {}
    if str((train.get("plan") or {}).get(COMPONENT, "")).endswith("SameSpeaker"):
        return "speech"
    if any(stage.get("audio") for stage in train.get("stages", []) if isinstance(stage, dict)):
        return "av"
    return {"frames": "video", "waveform": "speech"}.get(device.get("mode", "image"), device.get("mode", "image"))


def test_the_paper_scale_configs_are_found() -> None:
    assert len(PAPER) >= 19 and "image/mae_vit_base" in PAPER and "audio/cpc_speech_paper" in PAPER


def test_every_tiny_override_names_a_shipped_paper_config() -> None:
    stale = sorted(set(_table()) - set(PAPER))
    assert not stale, f"tiny overrides for configs that are not shipped paper-scale configs: {stale}"


@pytest.mark.parametrize("name", PAPER)
def test_tiny_override_keys_exist_in_the_config(name: str) -> None:
    """Each override's sections exist in the config; its leaf is a key the config has, or an argument of the
    component it sits in (checked by `validate` against the signature), so a typo fails here."""
    table = _table()
    assert name in table, f"{name} has no tiny override in {TINY_OVERRIDES.name}"
    cfg = load_config(CONFIGS / f"{name}.yaml")
    for item in table[name]:
        key = item.split("=", 1)[0]
        node, parts = cfg, key.split(".")
        for depth, part in enumerate(parts[:-1]):
            found, node = _child(node, part)
            assert found, f"{name}: override {item!r}: {'.'.join(parts[:depth + 1])!r} is not in the config"
        found, _ = _child(node, parts[-1])
        assert found or (isinstance(node, dict) and COMPONENT in node), f"{name}: override {item!r} adds a key"
    tiny = apply_overrides(cfg, table[name])
    validate({k: tiny[k] for k in ("method", "data")})
    section(OptimSettings, tiny.get("optim"), "optim")
    assert tiny["method"][COMPONENT] == cfg["method"][COMPONENT]  # the same method, only smaller


def test_tiny_overrides_come_before_the_users(tmp_path: Path) -> None:
    from recipes.pretrain import load_run_config

    cfg = load_run_config("image/mae_vit_base", None, ["data.train.batch_size=3"], tiny=True)
    assert cfg["data"]["train"]["batch_size"] == 3 and cfg["method"]["encoder"]["depth"] == 2
    assert cfg["_name"] == "mae_vit_base-tiny"
    with pytest.raises(ConfigError, match="no tiny override"):
        tiny_overrides(CONFIGS / "image" / "mae_tiny.yaml")


def test_tiny_without_an_override_is_one_clear_line(capsys) -> None:
    assert main(["--config", "image/mae_tiny", "--tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'image/mae_tiny' has no tiny override" in err


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Callable[[str], Path]:
    """Shards of one kind, made on first use and shared by every config of the module that reads that kind."""
    from speech_data import speech_shards

    made: dict[str, Path] = {}
    makers = {"image": image_shards, "video": video_shards, "av": av_shards, "audio": audio_shards,
              "multimodal": multimodal_shards,
              "speech": lambda root: speech_shards(root, num_speakers=2, per_speaker=2, seconds=0.5)}

    def get(kind: str) -> Path:
        if kind not in made:
            made[kind] = makers[kind](tmp_path_factory.mktemp(kind))
        return made[kind]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER)
def test_paper_config_runs_two_steps_with_its_tiny_override(name: str, shards, tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml", _table().get(name, []))
    kind = _data_kind(cfg)
    cfg = apply_overrides(cfg, [f"data.train.source={shards(kind)}"] + (
        ["data.train.shuffle_window=4"] if "shuffle_window" in cfg["data"]["train"] else []))
    cfg["train"] = {"steps": 2, "log_every": 1, "ckpt_every": 0, "figure_every": -1, "out_dir": str(tmp_path),
                    "progress": False, "tensorboard": False, "device": "cpu", "name": name.replace("/", "-"),
                    "threads": 1}  # the recipe sets its own thread count: one, for a loss that does not depend on cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only adds contention on a shared machine
    try:
        summary = pretrain(cfg)
    finally:
        torch.set_num_threads(threads)
    assert summary["steps"] == 2 and math.isfinite(summary["first_loss"]) and math.isfinite(summary["last_loss"])
    check_first_loss(f"{name} --tiny", summary)
    assert Path(summary["checkpoint"]).is_file() and (Path(summary["run_dir"]) / "loss.png").is_file()
    params = sum(p.numel() for p in summary["method"].parameters())
    assert params < 5_000_000, f"{name} with its tiny override still has {params} parameters"
