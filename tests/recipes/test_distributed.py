import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmssl.config import instantiate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, cfg: dict, out: dict) -> None:
    from recipes.pretrain import pretrain

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    summary = pretrain(cfg, run_dir=cfg["train"]["out_dir"])
    flat = torch.cat([p.detach().flatten() for p in summary["method"].parameters()])
    gathered = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    loader = instantiate(cfg["data"]["train"], rank=rank, world_size=2)
    keys = next(iter(loader))["__key__"]
    out[rank] = {"same": torch.equal(gathered[0], gathered[1]), "steps": summary["steps"], "keys": keys}
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_stay_in_sync_and_read_different_samples(image_shards: Path, tmp_path: Path,
                                                                 mae_config) -> None:
    # 5 shards < 2 ranks x 3 workers: the run must still end with equal step counts on both ranks
    cfg = mae_config(image_shards, tmp_path, workers=3, steps=4, ckpt_every=0, figure_every=-1)
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), cfg, out), nprocs=2)
    assert out[0]["same"] and out[1]["same"]
    assert out[0]["steps"] == out[1]["steps"] == 4
    assert not set(out[0]["keys"]) & set(out[1]["keys"]) and len(out[0]["keys"]) == 2  # global batch 4 / 2 ranks
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
