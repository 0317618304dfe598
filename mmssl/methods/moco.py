"""MoCo v2: He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020, with the
v2 changes of Chen et al., "Improved Baselines with Momentum Contrastive Learning", 2020.

A query view goes through the encoder; a key view through a momentum copy of it. The query must pick its own key
out of that key and a queue of K keys from earlier batches. Follows `facebookresearch/moco` (`moco/builder.py`)
and REFERENCE.md §1.3:
- queue K = 65536 of L2-normalised 128-d keys, initialised random-normal then normalised; every step the keys of
  all ranks (gathered) replace the oldest entries;
- key encoder = momentum copy, m = 0.999, no gradient; `--mlp`: a Linear-ReLU-Linear head (no BN), 2048 wide;
- logits `[q.k+, q.queue] / T` with T = 0.2 (`--moco-t`, v2; 0.07 is v1), the positive at index 0, cross-entropy;
  one direction only (query = first view, key = second), as the official code;
- the key encoder moves after every optimiser step (`update(progress)`); the official code does the same move at
  the top of the next forward, which is the same sequence of weights.
Shuffle-BN: BatchNorm in the key branch would let a query and its key see each other's batch statistics (the
"cheat" of MoCo §3.3). When the key branch has BatchNorm (a CNN encoder) and several processes run, the key batch
is shuffled across ranks before the key encoder and unshuffled after, as `_batch_shuffle_ddp` does. A ViT encoder
with the v2 head has no BatchNorm anywhere, so there is nothing to shuffle; on one process shuffling is impossible
(the official code asserts DDP), so keys are computed unshuffled.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.losses import embedding_std
from mmssl.methods.output import Output
from mmssl.methods.views import has_batchnorm, two_views
from mmssl.models.heads import MLPHead
from mmssl.tokens import Tokens
from mmssl.train.distributed import all_gather_with_grad, is_distributed, rank, world_size
from mmssl.train.ema import ema_update_

__all__ = ["MoCo", "moco_logits"]


def moco_logits(q: Tensor, k: Tensor, queue: Tensor, *, temperature: float) -> Tensor:
    """MoCo's logits (n, 1 + K): `[q.k, q.queue^T] / T`; the positive is column 0.

    Args:
        q: normalised queries (n, D).
        k: normalised keys of the same samples (n, D).
        queue: normalised negative keys (K, D).
        temperature: T.
    """
    l_pos = (q * k).sum(dim=-1, keepdim=True)  # (n, 1)
    l_neg = q @ queue.T  # (n, K)
    return torch.cat([l_pos, l_neg], dim=1) / temperature  # (n, 1 + K)


class MoCo(nn.Module):
    """MoCo v2 with a queue of negatives and a momentum key encoder.

    Args:
        encoder: a `TokenEncoder` (its `pooled` output and `dim` are used).
        dim: key/query width (128).
        hidden_dim: hidden width of the MLP head; None uses the encoder's width (2048 for ResNet-50).
        mlp: the v2 MLP head (False: one linear map, v1).
        queue_size: K, the number of queued negatives.
        momentum: key encoder momentum m.
        temperature: softmax temperature T.
    """

    modalities = ("image", "video", "audio")
    sync_batchnorm = False  # shuffle-BN relies on per-rank statistics; the recipe must not make them global

    def __init__(self, encoder: nn.Module, *, dim: int = 128, hidden_dim: int | None = None, mlp: bool = True,
                 queue_size: int = 65536, momentum: float = 0.999, temperature: float = 0.2) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = MLPHead(encoder.dim, dim, hidden_dim=hidden_dim or encoder.dim, layers=2 if mlp else 1,
                            bn=False)
        self.key_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.key_head = copy.deepcopy(self.head).requires_grad_(False)
        self.momentum, self.temperature = momentum, temperature
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, progress: float) -> None:
        """Moves the key encoder and head towards the query ones (constant momentum in v2)."""
        ema_update_(self.key_encoder, self.encoder, self.momentum)
        ema_update_(self.key_head, self.head, self.momentum)

    def _key_branch(self, tokens: Tokens) -> Tensor:
        return F.normalize(self.key_head(self.key_encoder(tokens).pooled), dim=-1)

    @torch.no_grad()
    def keys(self, tokens: Tokens) -> Tensor:
        """Normalised keys (n, dim) of this rank's samples, shuffled across ranks when the key branch has BN."""
        if not (is_distributed() and world_size() > 1 and has_batchnorm(self.key_encoder)):
            return self._key_branch(tokens)
        n = tokens.batch_size
        patches = all_gather_with_grad(tokens.patches)  # (n * world, N, P)
        visible = None if tokens.visible is None else all_gather_with_grad(tokens.visible)
        perm = torch.randperm(patches.shape[0], device=patches.device)
        dist.broadcast(perm, src=0)  # one permutation for all ranks
        mine = perm[rank() * n:(rank() + 1) * n]  # the samples this rank encodes
        shuffled = Tokens(patches=patches[mine], grid=tokens.grid, patch=tokens.patch, modality=tokens.modality,
                          visible=None if visible is None else visible[mine])
        k_all = all_gather_with_grad(self._key_branch(shuffled))  # (n * world, dim), row j is sample perm[j]
        restored = torch.empty_like(k_all)
        restored[perm] = k_all  # back in the original (rank-major) order
        return restored[rank() * n:(rank() + 1) * n]

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Replaces the oldest queue entries with `keys` (n, dim) gathered from every rank."""
        keys = all_gather_with_grad(keys)  # (n * world, dim), rank-major
        size = self.queue.shape[0]
        keys = keys[-size:]  # a batch larger than the queue keeps its newest keys
        ptr = int(self.queue_ptr)
        index = (ptr + torch.arange(keys.shape[0], device=keys.device)) % size  # wraps when K % batch != 0
        self.queue[index] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + keys.shape[0]) % size)

    def forward(self, batch: dict) -> Output:
        view_q, view_k = two_views(batch, "MoCo")
        q = F.normalize(self.head(self.encoder(view_q).pooled), dim=-1)  # (n, dim)
        k = self.keys(view_k)  # (n, dim), no gradient
        # a copy: the queue changes in place below, and autograd needs this step's values for the backward
        logits = moco_logits(q, k, self.queue.clone(), temperature=self.temperature)
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        loss = F.cross_entropy(logits.float(), labels)
        if self.training:  # evaluation forwards leave the queue as it is
            self.enqueue(k)
        acc = (logits.argmax(1) == 0).float().mean()
        return Output(loss=loss, logs={"loss": loss.detach(), "embedding_std": embedding_std(q),
                                       "contrast_acc": acc.detach()})
