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
        # the gathered rows are the same rows, so the same float32 ops on 6 x 4 values (measured bit-exact); loss
        # ~4.8 and gradients <= ~0.8: the bounds allow a different summation order in gloo's gather or reduction
        assert torch.allclose(loss, ref.detach(), atol=1e-6)
        # each rank's loss is the full loss; DDP averages gradients over ranks, so the local gradient of the
        # sum over ranks divided by the world size equals the single-process gradient of the slice
        assert torch.allclose(grad / 2, full.grad[rank * 3:(rank + 1) * 3], atol=1e-5)


def _byol():
    from mmssl.methods.byol import BYOL
    from mmssl.models import TokenEncoder

    encoder = TokenEncoder("vit_tiny_patch16_224", modality={"name": "image", "patch": [8, 8], "size": [16, 16]},
                           depth=1, dim=16, heads=2)
    return BYOL(encoder, dim=8, hidden_dim=12)


def _batchnorms(module: torch.nn.Module) -> dict[str, type]:
    return {n: type(m) for n, m in module.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


def test_sync_batchnorm_converts_every_head_bn_on_an_accelerator(monkeypatch) -> None:
    from mmssl.train import distributed

    method = _byol()
    before = _batchnorms(method)
    # projector, predictor and the target projector each have one hidden BN
    assert set(before) == {"projector.mlp.1", "predictor.mlp.1", "target_projector.mlp.1"}
    params, keys = list(method.parameters()), list(method.state_dict())
    frozen = [p.requires_grad for p in method.parameters()]
    assert distributed.sync_batchnorm(method, torch.device("cuda")) is method  # one process: nothing to sync
    assert _batchnorms(method) == before
    # two ranks on an accelerator (checked without running a SyncBatchNorm forward, which needs a GPU here)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    assert distributed.sync_batchnorm(method, torch.device("cpu")) is method  # torch's SyncBN refuses CPU tensors
    assert _batchnorms(method) == before
    converted = distributed.sync_batchnorm(method, torch.device("cuda"))
    assert converted is method
    assert set(_batchnorms(method).values()) == {torch.nn.SyncBatchNorm} and set(_batchnorms(method)) == set(before)
    # the same Parameter objects (an optimiser built before still holds them), flags and checkpoint keys
    assert all(a is b for a, b in zip(params, method.parameters())) and len(params) == len(list(method.parameters()))
    assert [p.requires_grad for p in method.parameters()] == frozen
    assert list(method.state_dict()) == keys


def test_sync_batchnorm_respects_an_opt_out(monkeypatch) -> None:
    from mmssl.methods.moco import MoCo
    from mmssl.train import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    method = _byol()
    method.sync_batchnorm = False
    distributed.sync_batchnorm(method, torch.device("cuda"))
    assert set(_batchnorms(method).values()) == {torch.nn.BatchNorm1d}
    assert MoCo.sync_batchnorm is False  # shuffle-BN needs per-rank statistics


def _bn_worker(rank: int, port: int, out: dict) -> None:
    from mmssl.train.distributed import sync_batchnorm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        method = sync_batchnorm(_byol(), torch.device("cpu"))
        views = [method.encoder.modality.tokenize(torch.randn(4, 3, 16, 16)) for _ in range(2)]
        loss = method({"views": views}).loss  # per-rank BN runs under a gloo group
        loss.backward()
        refused = False
        try:  # the reason CPU runs are left alone: torch's SyncBatchNorm refuses CPU tensors in a process group
            torch.nn.SyncBatchNorm(4)(torch.randn(3, 4))
        except ValueError:
            refused = True
        out[rank] = (_batchnorms(method), bool(torch.isfinite(loss)), refused)
    finally:
        dist.destroy_process_group()


def test_sync_batchnorm_leaves_cpu_gloo_runs_with_per_rank_bn() -> None:
    out = mp.Manager().dict()
    mp.spawn(_bn_worker, args=(_free_port(), out), nprocs=2)
    for rank in range(2):
        kinds, finite, refused = out[rank]
        assert set(kinds.values()) == {torch.nn.BatchNorm1d} and finite
        # if torch ever syncs BN on CPU this fails, and sync_batchnorm can drop its CPU exception
        assert refused
