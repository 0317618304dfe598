"""Small shards and a CLI runner for the fault tests: each fault must end in one line naming its cause."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/media.py

from media import make_image_shards  # noqa: E402


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """24 JPEGs in 3 shards."""
    return make_image_shards(tmp_path_factory.mktemp("fault-images"))
