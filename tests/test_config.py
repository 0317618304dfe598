from pathlib import Path

import pytest

from mmssl.config import ConfigError, apply_overrides, instantiate, load_config, parse_value, validate
from mmssl.models import SelfAttentionDecoder, TokenEncoder

ENCODER = {"_component_": "mmssl.models.TokenEncoder", "name": "vit_tiny_patch16_224", "modality": "image",
           "depth": 1, "dim": 32, "heads": 2}


def test_load_and_override(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  encoder:\n    depth: 12\nlr: 0.1\nlist: [{a: 1}, {a: 2}]\n")
    cfg = load_config(path, ["model.encoder.depth=2", "lr=1e-4", "new.key=true", "list.1.a=5", "name=abc"])
    assert cfg["model"]["encoder"]["depth"] == 2
    assert cfg["lr"] == pytest.approx(1e-4) and isinstance(cfg["lr"], float)  # a parsed literal: approx for the type
    assert cfg["new"]["key"] is True and cfg["list"][1]["a"] == 5 and cfg["name"] == "abc"


def test_override_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["nokey"])
    with pytest.raises(ConfigError, match="'lr' is a value"):
        apply_overrides({"lr": 0.1}, ["lr.x=1"])
    with pytest.raises(ConfigError, match="'l.3'"):
        apply_overrides({"l": [1]}, ["l.3=1"])


def test_parse_value_types() -> None:
    assert parse_value("3") == 3 and parse_value("1e-4") == 1e-4 and parse_value("[1, 2]") == [1, 2]
    assert parse_value("null") is None and parse_value("vit_base") == "vit_base"


def test_instantiate_nested_components() -> None:
    cfg = {"encoder": dict(ENCODER), "decoder": {"_component_": "mmssl.models.SelfAttentionDecoder",
                                                 "dim": 16, "depth": 1, "heads": 2}}
    built = instantiate({"encoder": cfg["encoder"], "other": [1, {"x": 2}]})
    assert isinstance(built["encoder"], TokenEncoder) and built["encoder"].depth == 1
    assert built["other"] == [1, {"x": 2}]
    with pytest.raises(ConfigError, match=r"'decoder\.in_dim' is required"):
        instantiate(cfg)  # the decoder's width is only known at run time
    dec = instantiate(cfg["decoder"], 32, 768)  # run-time positional arguments
    assert isinstance(dec, SelfAttentionDecoder)


def test_misspelled_key_is_named_with_a_guess() -> None:
    cfg = {"model": {"encoder": dict(ENCODER, deptth=2)}}
    with pytest.raises(ConfigError, match=r"'model\.encoder\.deptth'.*Did you mean 'depth'") as err:
        validate(cfg)
    assert "Valid keys:" in str(err.value) and "modality" in str(err.value)
    with pytest.raises(ConfigError, match="deptth"):
        instantiate(cfg)


def test_missing_required_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"'decoder\.in_dim' is required"):
        validate({"decoder": {"_component_": "mmssl.models.SelfAttentionDecoder", "out_dim": 4}})


def test_bad_component_path_is_named() -> None:
    with pytest.raises(ConfigError, match=r"model\._component_.*mmssl\.models\.NoSuchThing"):
        validate({"model": {"_component_": "mmssl.models.NoSuchThing"}})


def test_bad_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"'enc'.*unknown encoder"):
        instantiate({"enc": dict(ENCODER, name="vit_nope")})


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
