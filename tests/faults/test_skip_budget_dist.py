"""The skip budget of a multi-process run: counts summed over the ranks (gloo, two processes), every rank stops
with the same DataError, and the run summary holds every rank's counts."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from media import make_image
from pipelines.sharding.writer import ShardWriter
from pipelines.stats import DataError, LoaderStats


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(size: int, skipped: int, rank: int) -> dict:
    return {"__size__": size, "__timing__": {"read": 1.0 + rank},
            "__skipped__": [(f"r{rank}.tar", f"k{rank}-{i}", "decode_video: no video stream") for i in range(skipped)]}


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        # under the budget: 2 of 40 over both ranks (rank 1 alone: 2 of 20)
        calm = LoaderStats(max_skip_fraction=0.1, world_size=2)
        calm.add(_batch(20 - 2 * rank, 2 * rank, rank))
        calm.check()
        merged = calm.merged()
        out[f"calm{rank}"] = (merged.read, merged.total_skipped, merged.summary())
        # rank 0's data is fine, rank 1's is 60% broken: 30% of the run, over a 10% budget
        broken = LoaderStats(max_skip_fraction=0.1, world_size=2)
        broken.add(_batch(40 - 24 * rank, 24 * rank, rank))  # one process would have stopped here on rank 1
        out[f"added{rank}"] = True
        try:
            broken.check()
        except DataError as err:
            out[f"error{rank}"] = str(err)
    finally:
        dist.destroy_process_group()


def test_ranks_sum_their_counts_and_stop_together_with_one_error() -> None:
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2)
    assert out["calm0"] == out["calm1"]
    read, skipped, summary = out["calm0"]
    assert (read, skipped) == (40, 2)
    assert summary.startswith("read 40 samples on 2 ranks, used 38, skipped 2") and "r1.tar 2" in summary
    assert "seconds: read 1.50" in summary  # seconds are per rank (averaged), counts are summed
    assert out["added0"] and out["added1"]
    assert out["error0"] == out["error1"]
    error = out["error0"]
    assert "\n" not in error and error.startswith("24 of the 80 samples read were skipped (budget 10%")
    assert "on 2 ranks" in error and "decode_video 24" in error and "r1.tar 24" in error


def _pretrain(rank: int, port: int, overrides: list[str], out: dict) -> None:
    from recipes.pretrain import load_run_config, pretrain

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = load_run_config("mae_tiny", "image", overrides)
    try:
        pretrain(cfg, run_dir=cfg["train"]["out_dir"])
        out[rank] = "trained"
    except DataError as err:
        out[rank] = str(err)
    finally:
        dist.destroy_process_group()


def test_two_training_ranks_stop_at_the_same_step_with_the_same_error(tmp_path: Path) -> None:
    """30% of the data is no image: each rank alone sees only its share; the summed counts stop both, at the
    first epoch's end at the latest (the old per-rank budget stopped one and left the other waiting)."""
    make_image(tmp_path / "good.jpg", width=72, height=64, seed=0)
    writer = ShardWriter(tmp_path / "s-000.tar")
    for i in range(20):
        writer.add(f"k{i:02d}", {"jpg": b"<html>403</html>" * 8 if i % 10 in (1, 4, 7) else
                                 (tmp_path / "good.jpg").read_bytes()})
    (tmp_path / "index.json").write_text(json.dumps({"shards": [writer.close()], "samples": 20}))
    overrides = [f"data.train.source={tmp_path}", "data.train.batch_size=4", "data.train.num_workers=0",
                 f"train.out_dir={tmp_path / 'run'}", "train.progress=false", "train.tensorboard=false",
                 "train.steps=30", "train.log_every=5", "train.device=cpu", "train.ckpt_every=0",
                 "train.figure_every=-1", "method.encoder.depth=1", "method.encoder.dim=32", "method.encoder.heads=2",
                 "method.decoder_dim=16", "method.decoder_depth=1", "method.decoder_heads=2"]
    (tmp_path / "run").mkdir()
    out = mp.Manager().dict()
    mp.spawn(_pretrain, args=(_free_port(), overrides, out), nprocs=2)
    assert out[0] == out[1] and "samples read were skipped (budget 10%" in out[0], dict(out)
    skipped, read = (int(n) for n in out[0].split(" samples read")[0].split(" of the "))
    assert read >= 20 and skipped > 0.1 * read and "on 2 ranks" in out[0] and f"decode_images {skipped}" in out[0]
