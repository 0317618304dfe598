"""Readers of DAVIS / VIP / JHMDB layouts, their errors, and the MAT-file reader."""

import numpy as np
import pytest
from PIL import Image

from mmssl.eval.datasets import DataError, read_davis, read_jhmdb, read_keypoints, read_vip
from mmssl.eval.matfile import read_mat

from .synthetic import write_davis, write_jhmdb, write_mat, write_vip


def test_davis_with_and_without_split(tmp_path) -> None:
    write_davis(tmp_path / "a", ("s1", "s2"), frames=3)
    seqs = read_davis(tmp_path / "a")
    assert [s.name for s in seqs] == ["s1", "s2"] and len(seqs[0].frames) == 3 and all(seqs[0].masks)
    (tmp_path / "a" / "ImageSets" / "2017" / "val.txt").write_text("s2\n")
    assert [s.name for s in read_davis(tmp_path / "a")] == ["s2"]
    write_davis(tmp_path / "b", ("only",), frames=2, split=False)  # no split file: every sequence folder
    assert [s.name for s in read_davis(tmp_path / "b")] == ["only"]


def test_davis_errors_name_the_file(tmp_path) -> None:
    root = write_davis(tmp_path, ("s",), frames=4)
    frames = root / "JPEGImages" / "480p" / "s"
    (frames / "00002.jpg").unlink()
    with pytest.raises(DataError, match=r"00002\.jpg: missing frame"):
        read_davis(root)
    (frames / "00003.jpg").unlink()
    with pytest.raises(DataError, match=r"00002\.png: annotation without a frame"):
        read_davis(root)
    for p in frames.iterdir():
        p.unlink()
    with pytest.raises(DataError, match=r"480p/s: empty sequence"):
        read_davis(root)


def test_davis_mask_size_mismatch(tmp_path) -> None:
    root = write_davis(tmp_path, ("s",), frames=2)
    bad = root / "Annotations" / "480p" / "s" / "00000.png"
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="P").save(bad)
    with pytest.raises(DataError, match=r"00000\.png: annotation is 10x10 but its frame is 128x96"):
        read_davis(root)


def test_vip_layout(tmp_path) -> None:
    seqs = read_vip(write_vip(tmp_path, frames=3))
    assert seqs[0].name == "videos1" and len(seqs[0].frames) == 3


@pytest.mark.parametrize("fmt", ["mat", "npy", "json"])
def test_jhmdb_keypoints(tmp_path, fmt: str) -> None:
    seqs = read_jhmdb(write_jhmdb(tmp_path, frames=4, fmt=fmt))
    assert seqs[0].name == "walk/v1" and seqs[0].keypoints.shape == (4, 15, 2)
    # 0-based: the writer stored 1-based MATLAB pixels around the disc centre
    assert np.all(seqs[0].keypoints > 0) and np.all(seqs[0].keypoints[..., 0] < 128)


def test_jhmdb_split_list_and_frame_count(tmp_path) -> None:
    root = write_jhmdb(tmp_path, frames=3)
    frames, label = root / "Rename_Images/walk/v1", root / "joint_positions/walk/v1/joint_positions.mat"
    (root / "vallist.txt").write_text(f"{frames} {label}\n")
    assert read_jhmdb(root, root / "vallist.txt")[0].keypoints.shape == (3, 15, 2)
    (root / "names.txt").write_text("walk/v1\n")
    assert len(read_jhmdb(root, "names.txt")) == 1
    write_mat(label, {"pos_img": np.ones((2, 15, 5))})
    with pytest.raises(DataError, match="joint_positions.mat: 5 annotated frames"):
        read_jhmdb(root)


def test_mat_reader_round_trip(tmp_path) -> None:
    pos = np.arange(2 * 15 * 4, dtype=float).reshape(2, 15, 4)
    for compress in (False, True):
        path = tmp_path / f"m{compress}.mat"
        write_mat(path, {"pos_img": pos, "viewpoint": "E", "s": np.array([[7.5]])}, compress=compress)
        out = read_mat(path)
        np.testing.assert_array_equal(out["pos_img"], pos)  # column-major order undone
        assert out["viewpoint"] == "E" and out["s"].shape == (1, 1)
    np.testing.assert_allclose(read_keypoints(path)[2, 3], pos[:, 3, 2] - 1)  # integers in float64: exact
    (tmp_path / "bad.mat").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 200)
    with pytest.raises(ValueError, match="v7.3"):
        read_mat(tmp_path / "bad.mat")
