"""Fixtures shared by the pipeline tests: a small folder of generated media with a few corrupt files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/media.py

from media import make_audio, make_corrupt, make_image, make_video  # noqa: E402


@pytest.fixture(scope="session")
def media_root(tmp_path_factory) -> Path:
    """A class-folder tree: images (6 good, 2 corrupt), videos (4 good, 1 corrupt), audio (3 good, 1 corrupt)."""
    root = tmp_path_factory.mktemp("media")
    for cls in ("a", "b"):
        (root / "image" / cls).mkdir(parents=True)
        for i in range(3):
            make_image(root / "image" / cls / f"{i}.jpg", seed=i + (10 if cls == "b" else 0))
    make_corrupt(root / "image" / "a" / "garbage.jpg")
    make_corrupt(root / "image" / "b" / "cut.jpg", like=root / "image" / "b" / "0.jpg", size=200)
    (root / "video" / "x").mkdir(parents=True)
    for i in range(4):
        make_video(root / "video" / "x" / f"v{i}.mp4", frames=24 + 8 * i, width=64, height=48, audio=i == 0)
    make_corrupt(root / "video" / "x" / "broken.mp4", like=root / "video" / "x" / "v1.mp4", size=1500)
    (root / "audio").mkdir()
    for i in range(3):
        make_audio(root / "audio" / f"t{i}.flac" if i else root / "audio" / "t0.wav", seconds=0.5, freq=300 + 100 * i)
    make_corrupt(root / "audio" / "noise.flac")
    return root
