"""User mistakes and environment faults of `mmssl ... pretrain`: each ends in one line that names the key or file,
exit 2 for a mistake and 1 for a fault of the data or disk, and nothing of the run is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmssl.cli import main

TINY = ["encoder.depth=1", "encoder.dim=32", "encoder.heads=2", "decoder_dim=16", "decoder_depth=1", "decoder_heads=2"]


def args(shards: Path, out: Path, *extra: str) -> list[str]:
    """`mmssl image pretrain` of a 1-block mae_tiny on the test shards, 4 steps, logged every step."""
    return ["image", "pretrain", "--config", "mae_tiny", f"data.train.source={shards}", "data.train.batch_size=4",
            "data.train.num_workers=0", f"train.out_dir={out}", "train.progress=false", "train.tensorboard=false",
            "train.steps=4", "train.log_every=1", "train.device=cpu", *[f"method.{o}" for o in TINY], *extra]


def resumed(argv: list[str]) -> list[str]:
    """`argv` with `--resume auto` right after the config, before the overrides (which argparse alone refused)."""
    return argv[:4] + ["--resume", "auto"] + argv[4:]


def run(capsys, argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def one_line(err: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.strip() and "Warning" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize("override,words", [
    ("train.steps=abc", ["'train.steps'", "int", "'abc'"]),
    ("optim.blr=abc", ["'optim.blr'", "float"]),
    ("train.steps=-5", ["'train.steps'", "at least 1"]),
    ("optim.betas=[0.9,x]", ["'optim.betas'"]),
    ("train.precision=bf32", ["'train.precision'", "bf16"]),
    ("data.train.stages.1.crops.0.size=60", ["'data.device.views.0'", "60x60", "patch"]),
])
def test_a_bad_value_is_one_line_and_exit_2(capsys, shards, tmp_path, override, words):
    code, err = run(capsys, args(shards, tmp_path, override))
    assert code == 2
    one_line(err, *words)


def test_an_unwritable_run_folder_is_one_line(capsys, shards, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # (read-only folders do not stop root, which runs the tests here)
    code, err = run(capsys, args(shards, blocker / "runs"))
    assert code == 2
    one_line(err, "train.out_dir", "cannot write the run folder")


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def newest_run(out: Path) -> Path:
    return sorted(out.glob("mae_tiny-*"))[-1]


def test_resume_after_a_torn_log_line_and_a_killed_checkpoint_write_continues_exactly(capsys, shards, tmp_path):
    assert main(args(shards, tmp_path / "whole")) == 0
    assert main(args(shards, tmp_path / "cut", "train.stop_after=2")) == 0
    run_dir = newest_run(tmp_path / "cut")
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.9')  # what a full disk leaves: a line cut short
    stale = run_dir / "checkpoints" / ".last.pt.tmp-99999"  # what kill -9 during a write leaves
    stale.write_bytes(b"partial")
    capsys.readouterr()
    with pytest.warns(UserWarning, match="dropped 1 unreadable line"):
        assert main(resumed(args(shards, tmp_path / "cut"))) == 0  # overrides after --resume too
    assert not stale.exists()
    a, b = losses(newest_run(tmp_path / "whole")), losses(run_dir)
    assert len(a) == len(b) == 4 and max(abs(x - y) for x, y in zip(a, b)) < 1e-6


def test_resume_auto_without_an_earlier_run_says_it_starts_a_new_one(capsys, shards, tmp_path):
    argv = args(shards, tmp_path) + ["--resume", "auto", "train.steps=2"]  # an override after the option
    code, err = run(capsys, argv)
    assert code == 0 and "no earlier run of 'mae_tiny'" in err and "starting a new one" in err
    assert len(losses(newest_run(tmp_path))) == 2


def test_resuming_with_another_batch_size_is_refused(capsys, shards, tmp_path):
    assert main(args(shards, tmp_path, "train.stop_after=2")) == 0
    code, err = run(capsys, resumed(args(shards, tmp_path, "data.train.batch_size=8")))
    assert code == 2
    one_line(err, "cannot resume", "batch_size=4", "same batch size")


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one(capsys, shards, tmp_path, monkeypatch):
    assert main(args(shards, tmp_path, "train.stop_after=2")) == 0
    run_dir = newest_run(tmp_path)
    ckpt = run_dir / "checkpoints" / "last.pt"
    before = ckpt.read_bytes()

    def full(*a, **k):  # what torch reports when the disk fills during a write
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", full)
    code, err = run(capsys, resumed(args(shards, tmp_path)))
    assert code == 1
    one_line(err, "could not write checkpoint", str(ckpt), "the previous one is kept")
    assert ckpt.read_bytes() == before and not list(ckpt.parent.glob(".*.tmp-*"))


@pytest.mark.parametrize("damage", ["deleted", "html"])
def test_a_missing_or_foreign_shard_is_named_before_the_first_step(capsys, shards, tmp_path, damage):
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    shard = sorted(copy.glob("*.tar"))[1]
    if damage == "deleted":
        shard.unlink()
    else:
        shard.write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>\n" * 20)
    code, err = run(capsys, args(copy, tmp_path / "runs"))
    assert code == 2
    one_line(err, shard.name, "missing" if damage == "deleted" else "not a tar file")
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_an_unwritable_shard_folder_is_one_line(capsys, tmp_path):
    from media import make_image

    src = tmp_path / "src"
    src.mkdir()
    make_image(src / "a.jpg", width=40, height=30, seed=0)
    (tmp_path / "a-file").write_text("not a folder")
    code, err = run(capsys, ["shard", str(src), str(tmp_path / "a-file" / "out"), "--quiet"])
    assert code == 2
    one_line(err, "cannot write", "a-file", "writable OUT folder")


def test_a_typo_with_nproc_2_is_one_line_before_any_process_starts(capsys, shards, tmp_path):
    code, err = run(capsys, args(shards, tmp_path, "data.train.sourc=x") + ["--nproc", "2"])
    assert code == 2
    one_line(err, "'data.train.sourc'", "Did you mean 'source'")
    assert not tmp_path.joinpath("mae_tiny").exists() and not list(tmp_path.glob("mae_tiny-*"))


def test_corrupt_and_mislabelled_images_are_counted_skips_not_crashes(tmp_path):
    """Flipped bytes in a PNG crashed the worker inside libpng (SIGSEGV); a JPEG named .png or bytes that are no
    image at all must be decoded by what they are or skipped, naming the shard and key."""
    import io

    import numpy as np
    from PIL import Image

    from pipelines.images import decode_images
    from pipelines.loader import StreamLoader
    from pipelines.sharding.writer import ShardWriter

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    png, jpg = io.BytesIO(), io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    Image.fromarray(pixels).save(jpg, format="JPEG")
    members = {}
    for i in range(6):  # PNGs with 256 bytes overwritten in the compressed data: libpng's error path
        broken = bytearray(png.getvalue())
        at = int(np.random.default_rng(i).integers(100, len(broken) - 300))
        broken[at:at + 256] = bytes(np.random.default_rng(i).integers(0, 256, 256, dtype=np.uint8))
        members[f"bad{i}"] = {"png": bytes(broken)}
    members["html"] = {"jpg": b"<!DOCTYPE html><html>404</html>" * 4}
    members["mislabelled"] = {"png": jpg.getvalue()}  # a JPEG under a .png name: decoded as what it is
    for i in range(8):
        members[f"good{i}"] = {"png": png.getvalue()}
    shard = tmp_path / "s-000.tar"
    writer = ShardWriter(shard)
    for key, files in members.items():
        writer.add(key, files)
    entry = writer.close()
    (tmp_path / "index.json").write_text(json.dumps({"shards": [entry], "samples": len(members)}))
    loader = StreamLoader(str(tmp_path), batch_size=len(members), stages=[decode_images()], shuffle_window=0,
                          num_workers=1, max_skip_fraction=0.6, drop_last=False)
    batch = next(iter(loader))  # a segmentation fault in the worker would end the test here
    assert batch["__size__"] >= 9  # the good PNGs and the mislabelled JPEG
    skipped = {key: reason for _, key, reason in batch["__skipped__"]}
    assert "html" in skipped and "not an image" in skipped["html"]
    assert "mislabelled" not in skipped and all(k.startswith(("bad", "html")) for k in skipped)
    assert all("decode_images" in r for r in skipped.values()) and len(skipped) >= 2
