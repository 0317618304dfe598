import json
from pathlib import Path

import pytest

from numbered import COUNTS, decode, to_int, write_shards
from pipelines.loader import StreamLoader
from pipelines.sharding.writer import ShardWriter
from pipelines.sample import guarded
from pipelines.stats import DataError

@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"))


def epoch_batches(source, *, world, workers, batch=6, drop_last=True, **kw) -> list[list[list[int]]]:
    """Per rank, the list of batches (as lists of sample numbers) of one epoch."""
    out = []
    for rank in range(world):
        loader = StreamLoader(str(source), batch_size=batch, stages=[decode], rank=rank, world_size=world,
                              num_workers=workers, shuffle_window=8, drop_last=drop_last, **kw)
        out.append([b["num"].tolist() if b["__size__"] else [] for b in loader])
    return out


def global_batches(per_rank: list[list[list[int]]]) -> list[list[int]]:
    return [sum((rank[b] for rank in per_rank), []) for b in range(len(per_rank[0]))]


@pytest.mark.parametrize("world,workers", [(w, k) for w in (1, 2, 3) for k in (0, 1, 2)])
def test_global_batches_are_the_same_for_any_ranks_and_workers(shards: Path, world: int, workers: int) -> None:
    reference = global_batches(epoch_batches(shards, world=1, workers=0))
    per_rank = epoch_batches(shards, world=world, workers=workers)
    assert len({len(r) for r in per_rank}) == 1, "every rank must yield the same number of batches"
    assert global_batches(per_rank) == reference
    assert len(reference) == 5 and all(len(b) == 6 for b in reference)
    flat = sum(reference, [])
    assert sorted(flat) == list(range(30)) and flat != list(range(30))  # every sample once, shuffled


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 2), (3, 1)])
def test_evaluation_reads_every_sample_once(shards: Path, world: int, workers: int) -> None:
    per_rank = epoch_batches(shards, world=world, workers=workers, batch=8, drop_last=False)
    assert len({len(r) for r in per_rank}) == 1 and len(per_rank[0]) == 4  # ceil(30 / 8)
    flat = [n for rank in per_rank for b in rank for n in b]
    assert sorted(flat) == list(range(30))


def test_epochs_differ_and_seeds_repeat(shards: Path) -> None:
    loader = StreamLoader(str(shards), batch_size=6, stages=[decode], shuffle_window=8)
    first = [b["num"].tolist() for b in loader]
    second = [b["num"].tolist() for b in loader]
    assert loader.epoch == 2 and first != second and sorted(sum(second, [])) == list(range(30))
    again = StreamLoader(str(shards), batch_size=6, stages=[decode], shuffle_window=8)
    assert [b["num"].tolist() for b in again] == first


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 2), (3, 0)])
def test_resume_mid_epoch_continues_the_stream(shards: Path, world: int, workers: int) -> None:
    full = StreamLoader(str(shards), batch_size=6, stages=[decode], shuffle_window=8)
    expect = [b["num"].tolist() for b in full] + [b["num"].tolist() for b in full]  # two epochs
    first = StreamLoader(str(shards), batch_size=6, stages=[decode], shuffle_window=8)
    it = iter(first)
    seen = [next(it)["num"].tolist() for _ in range(2)]
    state = first.state_dict()
    assert state == {"seed": 0, "epoch": 0, "samples_consumed": 12, "batch_size": 6}
    per_rank = []
    for rank in range(world):  # resume with another world size and worker count
        resumed = StreamLoader(str(shards), batch_size=6, stages=[decode], shuffle_window=8, rank=rank,
                               world_size=world, num_workers=workers)
        resumed.load_state_dict(state)
        assert len(resumed) == 3
        per_rank.append([b["num"].tolist() for b in resumed] + [b["num"].tolist() for b in resumed])
    assert seen + global_batches(per_rank) == expect


def test_corrupt_sample_and_truncated_shard_are_skipped_and_counted(tmp_path: Path) -> None:
    root = write_shards(tmp_path / "s", bad={"k0003"})
    shard = root / "s-002.tar"  # 9 samples: keep the first ~3
    shard.write_bytes(shard.read_bytes()[:3 * 2048 + 700])
    loader = StreamLoader(str(root), batch_size=6, stages=[decode], shuffle_window=8, drop_last=False,
                          max_skip_fraction=0.5)
    batches = list(loader)
    used = sorted(n for b in batches if b["__size__"] for n in b["num"].tolist())
    skipped = [s for b in batches for s in b["__skipped__"]]
    assert len(used) + len(skipped) == 30
    assert 3 not in used and any(k == "k0003" and r.startswith("decode") for _, k, r in skipped)
    truncated = [s for s in skipped if "s-002.tar" in s[0]]
    assert 5 <= len(truncated) <= 7 and all("unreadable" in r or "fewer" in r for _, _, r in truncated)
    summary = loader.stats.summary()
    assert f"skipped {len(skipped)}" in summary and "decode 1" in summary and "s-002.tar" in summary


def test_skip_budget_stops_a_broken_run(tmp_path: Path) -> None:
    root = write_shards(tmp_path / "s", counts=(60,), bad={f"k{i:04d}" for i in range(0, 60, 2)})
    loader = StreamLoader(str(root), batch_size=10, stages=[decode], max_skip_fraction=0.2)
    with pytest.raises(DataError, match="budget 20%"):
        list(loader)


def test_pipe_urls_and_brace_patterns(shards: Path) -> None:
    pattern = str(shards / "s-{000..004}.tar")
    by_pattern = StreamLoader(pattern, batch_size=6, stages=[decode], shuffle_window=8)
    assert by_pattern.shards.counts == COUNTS  # counts from the index beside the shards
    piped = StreamLoader([f"pipe:cat {shards}/s-{j:03d}.tar" for j in range(5)], batch_size=6, stages=[decode],
                         shuffle_window=8)
    assert piped.shards.counts == COUNTS  # no index for pipes: counted by reading
    assert [b["num"].tolist() for b in piped] == [b["num"].tolist() for b in by_pattern]


def test_clear_errors_for_bad_sources(tmp_path: Path, shards: Path) -> None:
    with pytest.raises(FileNotFoundError, match="index.json"):
        StreamLoader(str(tmp_path), batch_size=2)
    with pytest.raises(FileNotFoundError, match="shard not found"):
        StreamLoader(str(tmp_path / "x-{0..2}.tar"), batch_size=2)
    with pytest.raises(ValueError, match="no full global batch"):
        StreamLoader(str(shards), batch_size=64)


def test_timing_is_reported(shards: Path) -> None:
    loader = StreamLoader(str(shards), batch_size=6, stages=[decode])
    batch = next(iter(loader))
    assert set(batch["__timing__"]) == {"read", "parse_meta", "decode"}
    assert loader.stats.seconds["wait"] > 0


def test_loader_from_yaml_with_spawned_workers_and_fsspec_urls(shards: Path, tmp_path: Path) -> None:
    from mmssl.config import instantiate, load_config

    cfg = tmp_path / "data.yaml"
    cfg.write_text(f"""
loader:
  _component_: pipelines.loader.StreamLoader
  source: [{", ".join(f"file://{shards}/s-{j:03d}.tar" for j in range(5))}]
  batch_size: 6
  shuffle_window: 8
  num_workers: 2
  start_method: spawn
  stages:
    - _component_: pipelines.meta.keep
      exts: [json]
""")
    loader = instantiate(load_config(cfg)["loader"])
    batches = list(loader)
    assert loader.shards.counts == COUNTS
    assert sorted(m["n"] for b in batches for m in b["json"]) == list(range(30))
    assert all(set(b) >= {"json", "__key__"} and "num" not in b for b in batches)


def test_sample_missing_a_key_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "s"
    root.mkdir()
    w = ShardWriter(root / "s-000.tar")
    for n in range(8):
        w.add(f"k{n}", {"json": b"{}"} if n == 5 else {"num": str(n).encode(), "json": b"{}"})
    (root / "index.json").write_text(json.dumps({"shards": [w.close()]}))
    loader = StreamLoader(str(root), batch_size=4, stages=[guarded(to_int)], max_skip_fraction=0.5)
    used = sorted(n for b in loader for n in b["num"].tolist())
    assert used == [0, 1, 2, 3, 4, 6, 7]
    assert loader.stats.skipped == {"to_int": 1} and "KeyError" in loader.stats.first[0][2]
