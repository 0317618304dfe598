"""Contrastive methods across two gloo processes on the CPU, against one process on the concatenated batch.

- SimCLR, MoCo v3 and the audio-visual loss: the mean of the ranks' losses equals the single-process loss, and
  the ranks' gradients averaged (what DDP does) equal the single-process gradients;
- MoCo v2: after a step both ranks hold the same queue, with the keys of rank 0 then rank 1;
- MoCo v2 shuffle-BN: with a BatchNorm encoder, each key is computed in the BN batch that the shared permutation
  assigned it to, then returned to its own rank.

BatchNorm in the heads uses running statistics here (`.eval()` on the heads): per-rank batch statistics differ
from whole-batch ones by design (cross-replica BN needs SyncBatchNorm, which torch runs only on accelerators),
and this test is about the gathering of embeddings.
"""

import os
import socket
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import pytest
import torch.nn.functional as F
from learning import tiny_encoder, tiny_spec
from torch import nn

from mmssl.methods.avcontrastive import AVContrastive
from mmssl.methods.moco import MoCo
from mmssl.methods.mocov3 import MoCoV3
from mmssl.methods.simclr import SimCLR
from mmssl.tokens import Tokens

SPEC = tiny_spec("image", patch=(8, 8), size=(16, 16))
AUDIO = tiny_spec("audio", patch=(4, 4), size=(8, 8))
N, WORLD = 3, 2  # samples per rank, ranks


class BNEncoder(nn.Module):
    """A CNN-like encoder stand-in: mean patch -> Linear -> BatchNorm1d (what makes shuffle-BN matter)."""

    dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.modality = SPEC
        self.proj = nn.Linear(SPEC.patch_dim, self.dim)
        self.bn = nn.BatchNorm1d(self.dim)

    def forward(self, tokens: Tokens) -> SimpleNamespace:
        return SimpleNamespace(pooled=self.bn(self.proj(tokens.patches.mean(1))))


def _data() -> dict:
    g = torch.Generator().manual_seed(1)
    image = [SPEC.tokenize(torch.randn(N * WORLD, 3, 16, 16, generator=g)).patches for _ in range(2)]
    video = SPEC.tokenize(torch.randn(N * WORLD, 3, 16, 16, generator=g)).patches
    audio = AUDIO.tokenize(torch.randn(N * WORLD, 1, 8, 8, generator=g)).patches
    return {"image": image, "video": video, "audio": audio}


def _tokens(patches: torch.Tensor, spec=SPEC) -> Tokens:
    return Tokens(patches=patches, grid=spec.grid, patch=spec.patch, modality=spec.name)


def _batch(data: dict, part: slice) -> dict[str, dict]:
    return {"two_views": {"views": [_tokens(v[part]) for v in data["image"]]},
            "av": {"image": _tokens(data["video"][part]), "audio": _tokens(data["audio"][part], AUDIO)}}


def _methods() -> dict[str, nn.Module]:
    """The same weights in every process (seeded), BN heads on running statistics."""
    torch.manual_seed(0)
    simclr = SimCLR(tiny_encoder(SPEC, depth=1, dim=16), proj_dim=8, hidden_dim=16, temperature=0.5)
    simclr.head.eval()
    mocov3 = MoCoV3(tiny_encoder(SPEC, depth=1, dim=16), dim=8, mlp_dim=16)
    mocov3.projector.eval(), mocov3.predictor.eval(), mocov3.momentum_projector.eval()
    av = AVContrastive(tiny_encoder(SPEC, depth=1, dim=16), tiny_encoder(AUDIO, depth=1, dim=16), dim=8)
    return {"simclr": simclr, "mocov3": mocov3, "av": av}


def _loss_and_grads(name: str, method: nn.Module, batch: dict[str, dict]) -> tuple[torch.Tensor, torch.Tensor]:
    method.zero_grad()
    loss = method(batch["av" if name == "av" else "two_views"]).loss
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in method.parameters() if p.grad is not None])
    return loss.detach(), grads


def _worker(rank: int, port: int, data: dict, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    part = slice(rank * N, (rank + 1) * N)
    batch = _batch(data, part)
    for name, method in _methods().items():
        loss, grads = _loss_and_grads(name, method, batch)
        for t in (loss, grads):
            dist.all_reduce(t)
            t /= WORLD  # DDP averages gradients over ranks
        out[(name, rank)] = (loss, grads)
    torch.manual_seed(0)
    moco = MoCo(tiny_encoder(SPEC, depth=1, dim=16), dim=8, queue_size=10)
    moco(batch["two_views"])
    out[("moco", rank)] = moco.queue.clone()
    torch.manual_seed(0)
    shuffled = MoCo(BNEncoder(), dim=8, queue_size=10)
    torch.manual_seed(123)  # rank 0's permutation is broadcast; the test redraws it from this seed
    keys = shuffled.keys(_tokens(data["image"][1][part]))
    out[("shuffle", rank)] = keys
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two spawned processes importing torch: ~20 s on the shared CPUs
def test_two_ranks_match_one_process() -> None:
    data = _data()
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), data, out), nprocs=WORLD)
    whole = _batch(data, slice(None))
    for name, method in _methods().items():
        ref_loss, ref_grads = _loss_and_grads(name, method, whole)
        for rank in range(WORLD):
            loss, grads = out[(name, rank)]
            # float32 losses of O(1) and their gradients, gathered over 2 ranks and all-reduced vs one process: the
            # same terms summed in another order, ~1e-7 relative; the bounds are ~100x that (not re-measured with
            # these comments; a wrong gather is off by O(0.1))
            assert torch.allclose(loss, ref_loss, atol=1e-5), (name, float(loss), float(ref_loss))
            assert torch.allclose(grads, ref_grads, atol=1e-5, rtol=1e-4), name

    # MoCo v2: both ranks enqueued the gathered keys of both, in rank order
    torch.manual_seed(0)
    moco = MoCo(tiny_encoder(SPEC, depth=1, dim=16), dim=8, queue_size=10)
    with torch.no_grad():
        keys = F.normalize(moco.key_head(moco.key_encoder(_tokens(data["image"][1])).pooled), dim=1)  # (6, 8)
    for rank in range(WORLD):
        queue = out[("moco", rank)]
        # rank 0's 3 keys, then rank 1's 3: unit vectors from the same float32 ops on fewer rows, an ulp or two
        assert torch.allclose(queue[:N * WORLD], keys, atol=1e-5)
        assert torch.equal(queue, out[("moco", 0)])

    # shuffle-BN: keys computed on the permuted chunks, BN statistics of each chunk, then restored
    torch.manual_seed(0)
    shuffled = MoCo(BNEncoder(), dim=8, queue_size=10)
    torch.manual_seed(123)
    perm = torch.randperm(N * WORLD)
    patches = data["image"][1]
    expected = torch.empty(N * WORLD, 8)
    plain = torch.empty(N * WORLD, 8)
    with torch.no_grad():
        for r in range(WORLD):
            chunk, own = perm[r * N:(r + 1) * N], slice(r * N, (r + 1) * N)
            expected[chunk] = shuffled._key_branch(_tokens(patches[chunk]))
            plain[own] = shuffled._key_branch(_tokens(patches[own]))
    got = torch.cat([out[("shuffle", r)] for r in range(WORLD)])
    # the same BN chunks computed in another process: float32 rounding of O(1) keys; unshuffled BN batches give
    # other statistics, which moves keys by O(1), far past 1e-3
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the shuffle changed which samples shared a BN batch
