"""Two runs of an eval command with the same inputs print the same table: the random init, the probes and the
data order are all fixed."""

import pytest

from mmssl.cli import main

from .probe_media import colour_shards, save_method
from .synthetic import write_davis


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    base = tmp_path_factory.mktemp("repeat")
    ckpt = save_method("image/rotation_tiny", base / "run" / "checkpoints" / "last.pt", seed=1)
    return ckpt, colour_shards(base / "train", 6, seed=0), colour_shards(base / "val", 3, seed=1), base


def _table(out: str) -> str:
    """The printed table: from its title (the line after the input line) to the line before "wrote"."""
    lines = out.splitlines()
    return "\n".join(lines[next(i for i, line in enumerate(lines) if line.startswith("input")) + 1:-1])


@pytest.mark.parametrize("command", ["knn", "linear"])
def test_probe_tables_repeat(media, capsys, command: str) -> None:
    ckpt, train, val, base = media
    tables = []
    for run in range(2):
        assert main(["eval", command, "--checkpoint", str(ckpt), "--train", str(train), "--val", str(val),
                     "--workers", "0", "--out", str(base / f"{command}{run}")]) == 0
        tables.append(_table(capsys.readouterr().out))
    assert tables[0] == tables[1] and tables[0].count("\n") == 4, tables[0]  # title, header, three rows
    assert (base / f"{command}0" / f"{command}.csv").read_text() == (base / f"{command}1" / f"{command}.csv").read_text()


def test_random_init_only_run_repeats(media, capsys) -> None:
    _, train, val, base = media
    tables = []
    for seed in (0, 0, 1):
        assert main(["eval", "knn", "--train", str(train), "--val", str(val), "--workers", "0", "--seed", str(seed),
                     "--out", str(base / "r"), "--encoder", "vit_tiny_patch16_224", "encoder.depth=1",
                     "encoder.modality={name: image, patch: [8, 8], size: [32, 32]}"]) == 0
        tables.append(_table(capsys.readouterr().out))
    assert tables[0] == tables[1] and "checkpoint" not in tables[0] and "raw pixels" in tables[0]
    assert "seed 1" in tables[2]


def test_propagation_table_repeats_in_percent(media, tmp_path, capsys) -> None:
    ckpt = media[0]
    root = write_davis(tmp_path / "davis", ("s1",), frames=3)
    tables = []
    for run in range(2):
        assert main(["eval", "propagation", "--checkpoint", str(ckpt), "--data", str(root), "--task", "davis",
                     "--out", str(tmp_path / f"p{run}")]) == 0
        out = capsys.readouterr().out
        tables.append(out[out.index("davis label propagation"):out.index("wrote")])
    assert tables[0] == tables[1]
    rows = {line.split("  ")[0]: line for line in tables[0].splitlines()[2:]}
    assert set(rows) == {"checkpoint", "random init", "raw pixels", "copy first frame"}, tables[0]
    copy = float(rows["copy first frame"].split()[3])  # J&F in percent, not a 0-1 fraction
    assert 1 < copy <= 100, tables[0]
