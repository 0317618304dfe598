import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmssl.train.distributed import all_gather_with_grad


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loss(z: torch.Tensor) -> torch.Tensor:
    # a loss where every row interacts with every other row, like a contrastive loss
    sim = z @ z.T
    return torch.logsumexp(sim, dim=1).mean()


def _worker(rank: int, port: int, x: torch.Tensor, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    local = x[rank * 3:(rank + 1) * 3].clone().requires_grad_(True)
    loss = _loss(all_gather_with_grad(local))
    loss.backward()
    out[rank] = (loss.detach(), local.grad.clone())
    dist.destroy_process_group()


def test_gathered_loss_and_gradients_match_single_process() -> None:
    x = torch.randn(6, 4)
    full = x.clone().requires_grad_(True)
    ref = _loss(full)
    ref.backward()
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), x, out), nprocs=2)
    for rank in range(2):
        loss, grad = out[rank]
        assert torch.allclose(loss, ref.detach(), atol=1e-6)
        # each rank's loss is the full loss; DDP averages gradients over ranks, so the local gradient of the
        # sum over ranks divided by the world size equals the single-process gradient of the slice
        assert torch.allclose(grad / 2, full.grad[rank * 3:(rank + 1) * 3], atol=1e-5)
