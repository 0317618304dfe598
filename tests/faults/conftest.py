"""Small shards and a CLI runner for the fault tests: each fault must end in one line naming its cause."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/media.py

from media import make_image  # noqa: E402

from pipelines.sharding.tool import ShardOptions, run_sharding  # noqa: E402


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """24 JPEGs in 3 shards."""
    src = tmp_path_factory.mktemp("fault-images")
    for i in range(24):
        make_image(src / f"{i:02d}.jpg", width=72, height=64, seed=i)
    run_sharding(src, src / "shards", ShardOptions(samples_per_shard=8), progress=False)
    return src / "shards"
