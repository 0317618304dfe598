"""Every YAML under recipes/configs/ loads, validates, and its `method` instantiates (on the meta device)."""

from pathlib import Path

import pytest
import torch
from torch import nn

from mmssl.config import instantiate, load_config, validate

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "recipes" / "configs").rglob("*.yaml"))
OPTIM_KEYS = {"blr", "batch_size", "betas", "weight_decay", "warmup_epochs", "epochs", "min_lr"}
MASKED_MODELING = ("mae", "videomae", "siammae", "audiomae", "multimae", "dae")


def test_configs_exist_for_every_masked_modeling_method() -> None:
    names = {p.stem.split("_")[0] for p in CONFIGS}
    assert set(MASKED_MODELING) <= names
    for method in MASKED_MODELING:  # a paper-scale and a tiny config each
        stems = [p.stem for p in CONFIGS if p.stem.split("_")[0] == method]
        assert f"{method}_tiny" in stems and any(s != f"{method}_tiny" for s in stems), stems


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_validates_and_builds(path: Path) -> None:
    cfg = load_config(path)
    validate(cfg)
    if "method" not in cfg:
        return
    target = cfg["method"]["_component_"]
    if target.split(".")[-2] in MASKED_MODELING:
        assert OPTIM_KEYS <= set(cfg.get("optim", {})), f"{path}: optim needs {sorted(OPTIM_KEYS)}"
        assert cfg["optim"]["betas"] == [0.9, 0.95]
    with torch.device("meta"):  # shapes and wiring without allocating ViT-B weights
        method = instantiate(cfg["method"], where="method")
    assert isinstance(method, nn.Module) and isinstance(method.encoder, nn.Module)
    assert method.encoder.modality.name in type(method).modalities


def _full_size(name: str, b: int = 2):
    from mmssl.modalities import get_modality

    spec = get_modality(name)
    if spec.categorical:
        return spec.tokenize(torch.randint(0, spec.num_classes, (b, *spec.size)))
    return spec.tokenize(torch.randn(b, spec.channels, *spec.size))


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem.endswith("_tiny")
                                  and p.stem.split("_")[0] in MASKED_MODELING], ids=lambda p: p.stem)
def test_tiny_config_trains_a_step_at_full_input_size(path: Path) -> None:
    method = instantiate(load_config(path)["method"], where="method")
    if type(method).__name__ == "SiamMAE":
        batch = {"frames": [_full_size("image"), _full_size("image")]}
    else:
        names = getattr(method, "names", [method.encoder.modality.name])
        batch = {n: _full_size(n) for n in names}
    out = method(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and method.encoder.patch_embed.proj.weight.grad is not None
