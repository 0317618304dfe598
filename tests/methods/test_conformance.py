"""Conformance over every registered method: each one in `mmssl.methods.all_methods()` has a shipped tiny config
(`recipes/configs/<modality>/*_tiny.yaml`), and each of its tiny configs builds through the recipe's `build_run`
and trains 20 steps on the CPU on one fixed batch of shards made here: the loss is finite at every step and falls,
`update` (EMA teachers, schedules) is called after every step with the step's progress, and `figure` (where the
method has one) draws from a batch without error.

No list of methods or configs to edit: a new method file with a tiny config is picked up, and one without a tiny
config fails here by name.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from config_runs import audio_shards, av_shards, image_shards, multimodal_shards, video_shards
from mmssl.config import COMPONENT, load_config, locate
from mmssl.discover import config_root, configs
from mmssl.methods import all_methods
from mmssl.train.step import method_inputs
from recipes.pretrain import build_run

STEPS = 20
# the 20 steps are the first of a nominal 1000-step run, as at the start of real training: the schedules the methods
# follow (teacher temperature, EMA momentum, weight decay) stay near their start instead of running their whole
# course in 20 steps, so what is tested is the method's gradient
SCHEDULE = 1000
LR = 1e-3  # see `_config`


def _tiny_configs() -> dict[type, list[str]]:
    """Method class -> the shipped `*_tiny` configs (e.g. "image/dino_tiny") whose `method._component_` names it."""
    found: dict[type, list[str]] = {}
    for modality, names in configs().items():
        for stem in (n for n in names if n.endswith("_tiny")):
            cls = locate(load_config(_path(f"{modality}/{stem}"))["method"][COMPONENT])
            found.setdefault(cls, []).append(f"{modality}/{stem}")
    return found


def _path(config: str) -> Path:
    """The shipped file of a config named "<modality>/<name>"."""
    return config_root() / f"{config}.yaml"


def _cases() -> list[Any]:
    """One case per (method, tiny config); a method with no tiny config is a case that fails naming it."""
    configs = _tiny_configs()
    cases = []
    for name, cls in all_methods().items():
        for config in configs.get(cls, [None]):
            cases.append(pytest.param(name, config, id=f"{name}-{config or 'no-tiny-config'}"))
    return cases


def _data_kind(cfg: dict) -> str:
    """Which synthetic shards a config reads: its device stage's layout, and audio tracks for audio-visual clips."""
    stages = cfg["data"]["train"].get("stages", [])
    if any(isinstance(stage, dict) and stage.get("audio") for stage in stages):
        return "av"
    mode = (cfg["data"].get("device") or {}).get("mode", "image")
    return {"frames": "video", "waveform": "audio"}.get(mode, mode)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Callable[[str], Path]:
    """Shards of one kind, made on first use and shared by the module's cases."""
    makers = {"image": image_shards, "video": video_shards, "av": av_shards, "audio": audio_shards,
              # MultiMAE's tiny config crops 224 x 224 from RGB, depth and semantic maps
              "multimodal": lambda root: multimodal_shards(root, width=240, height=232)}
    made: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in made:
            made[kind] = makers[kind](tmp_path_factory.mktemp(kind))
        return made[kind]

    return get


def _config(config: str, shards: Path, out_dir: Path) -> dict:
    """The tiny config unchanged but for its data source, a batch of 4, no workers, and the optimiser's rate.

    The paper rate scaled to a batch of 4 (blr * 4 / 256, ~1e-5) after a warmup moves no loss in 20 steps; a fixed
    1e-3 without warmup tests what this test is for, that the loss's gradients reach weights that lower it.
    """
    cfg = load_config(_path(config), [
        f"data.train.source={shards}", "data.train.batch_size=4", "data.train.num_workers=0",
        "data.train.shuffle_window=4", f"optim.lr={LR}", "optim.warmup_epochs=0", f"optim.min_lr={LR}"])
    cfg["train"] = {"steps": SCHEDULE, "device": "cpu", "threads": 1, "out_dir": str(out_dir), "progress": False,
                    "tensorboard": False, "name": config.replace("/", "-")}
    return cfg


@pytest.mark.parametrize("name,config", _cases())  # ~35 s for all 25 on 2 busy cores: in the fast subset
def test_method_trains_on_a_fixed_batch(name: str, config: str | None, shards, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """20 steps on one batch: finite, falling (mean of the last 5 under the mean of the first 5), `update` after
    each step, `figure` at the end.

    A self-distillation loss (a method that logs `teacher_entropy`: DINO, iBOT) is the teacher's entropy plus the
    student's KL to it; centering raises the teacher's entropy on a fixed batch by design, so what must fall is the
    loss less that entropy (measured, image/dino_tiny: loss 6.45 -> 4.68 -> 6.69 while loss - entropy 1.98 -> 0.11).
    """
    if config is None:
        pytest.fail(f"method {name!r} has no tiny config: add recipes/configs/<modality>/<name>_tiny.yaml whose "
                    f"method._component_ names it")
    cls = all_methods()[name]
    progresses: list[float] = []
    if hasattr(cls, "update"):
        original = cls.update

        def counted(self, progress: float) -> None:
            progresses.append(progress)
            original(self, progress)

        # on the class, before the step is built: TrainStep looks `update` up once, when it is made
        monkeypatch.setattr(cls, "update", counted)

    cfg = _config(config, shards(_data_kind(load_config(_path(config)))), tmp_path)
    threads = torch.get_num_threads()
    run = build_run(cfg)  # sets one torch thread (train.threads): the tiny matrices gain nothing from more
    losses: list[float] = []
    learned: list[float] = []  # what the student lowers: see `test_method_trains_on_a_fixed_batch`'s docstring
    try:
        batch = next(run.feed)
        run.feed.close()
        assert isinstance(run.method, cls)
        for i in range(STEPS):
            # a copy each step, so a method that changes its batch in place still sees the same data
            out = run.step([copy.deepcopy(batch)], i / SCHEDULE, progress_after=(i + 1) / SCHEDULE)
            losses.append(float(out.loss))
            learned.append(losses[-1] - float(out.logs.get("teacher_entropy", 0.0)))
    finally:
        run.feed.close()
        torch.set_num_threads(threads)
    assert all(math.isfinite(x) for x in losses), f"{name} ({config}): non-finite losses {losses}"
    first, last = sum(learned[:5]) / 5, sum(learned[-5:]) / 5
    assert last < first, f"{name} ({config}): loss did not fall on a fixed batch: {first:.4f} -> {last:.4f} {learned}"
    if hasattr(cls, "update"):
        assert progresses == [(i + 1) / SCHEDULE for i in range(STEPS)]  # after every step, the progress after it
    if hasattr(run.method, "figure"):
        path = tmp_path / "figure.png"
        with torch.no_grad():  # as the recipe draws it
            run.method.figure(method_inputs(batch), path)
        assert path.is_file() and path.stat().st_size > 0, f"{name} ({config}): figure wrote no {path.name}"
