"""Deep InfoMax (local): Hjelm et al., "Learning Deep Representations by Mutual Information Estimation and
Maximization", ICLR 2019.

Maximise a lower bound on the mutual information between an input's global feature and each of its local
features. Follows rdevon/DIM (`cortex_DIM/functions/dim_losses.py`, `gan_losses.py`, `nn_modules/mi_networks.py`):
- local features are the encoder's feature grid (here the ViT's patch tokens, (B, N, D)); the global feature is
  the pooled output ([CLS]); each goes through a small MI network (two linear layers with BatchNorm and ReLU plus
  a linear shortcut that starts near the identity, then LayerNorm: `MI1x1ConvNet` / `MIFCNet`) to `units` wide;
- the critic is the dot product: u[i, j, n] = g_i . l_j(n) scores the global of sample i against cell n of j;
  pairs with i = j are drawn from the joint, the others from the product of marginals;
- JSD estimator (`fenchel_dual_loss`, measure "JSD"): loss = E_neg[softplus(-u) + u - log 2] - E_pos[log 2 -
  softplus(-u)], the expectations averaged over cells, then over positive / negative pairs;
- InfoNCE estimator (`nce_loss`): for each sample i and cell n, a softmax over the positive g_i . l_i(n) and the
  negatives g_i . l_j(n') for every cell n' of every other sample j; loss = -mean log p(positive). DIM pushes the
  i = j entries of the negative set down by 10; here they are left out exactly.
The prior-matching term and global DIM of the paper are not included (the paper's best local-only setting).
Any encoder that returns `Encoded` (tokens on a grid and a pooled vector) works, so a CNN feature map fits too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.methods.output import Output
from mmssl.models import TokenEncoder

__all__ = ["InfoMax", "MINet", "jsd_mi_loss", "infonce_mi_loss", "ESTIMATORS"]

LOG2 = math.log(2.0)


def _scores(local: Tensor, global_: Tensor) -> Tensor:
    """u[i, j, n] = global_i . local_j(n): (B, B, N) from local (B, N, U) and global (B, U)."""
    return torch.einsum("iu,jnu->ijn", global_.float(), local.float())


def jsd_mi_loss(local: Tensor, global_: Tensor) -> Tensor:
    """Negative Jensen-Shannon MI estimate between each local feature (B, N, U) and its global feature (B, U)."""
    u = _scores(local, global_)  # (B, B, N)
    pos = torch.eye(u.shape[0], dtype=torch.bool, device=u.device)  # (B, B): same sample
    e_pos = (LOG2 - F.softplus(-u)).mean(2)  # (B, B), averaged over cells
    e_neg = (F.softplus(-u) + u - LOG2).mean(2)
    return e_neg[~pos].mean() - e_pos[pos].mean()


def infonce_mi_loss(local: Tensor, global_: Tensor) -> Tensor:
    """InfoNCE over local (B, N, U) / global (B, U) pairs: each cell's positive against other samples' cells."""
    b, n, _ = local.shape
    u = _scores(local, global_)  # (B, B, N)
    pos = torch.diagonal(u, dim1=0, dim2=1).t()  # (B, N): u[i, i, n]
    same = torch.eye(b, dtype=torch.bool, device=u.device).unsqueeze(-1)  # (B, B, 1)
    neg = u.masked_fill(same, float("-inf")).reshape(b, 1, b * n).expand(b, n, b * n)  # (B, N, B*N)
    logits = torch.cat([pos.unsqueeze(-1), neg], dim=-1)  # (B, N, 1 + B*N): the positive first
    return -F.log_softmax(logits, dim=-1)[..., 0].mean()


ESTIMATORS = {"jsd": jsd_mi_loss, "infonce": infonce_mi_loss}


class MINet(nn.Module):
    """DIM's MI network: LayerNorm(block(x) + shortcut(x)), block = Linear-BN-ReLU-Linear, on the last axis.

    Args:
        in_dim: input width.
        units: output width (the critic's embedding size).
    """

    def __init__(self, in_dim: int, units: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(in_dim, units), nn.BatchNorm1d(units), nn.ReLU(), nn.Linear(units, units))
        self.shortcut = nn.Linear(in_dim, units)
        with torch.no_grad():  # DIM: the shortcut starts as (nearly) the identity on the first in_dim units
            self.shortcut.weight.uniform_(-0.01, 0.01)
            k = min(in_dim, units)
            self.shortcut.weight[torch.arange(k), torch.arange(k)] = 1.0
        self.norm = nn.LayerNorm(units)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])  # (M, in_dim): BatchNorm over every row
        out = self.norm(self.block(flat) + self.shortcut(flat))
        return out.reshape(*lead, out.shape[-1])  # (..., units)


class InfoMax(nn.Module):
    """Local Deep InfoMax on the encoder's token grid.

    Args:
        encoder: a `TokenEncoder` (with [CLS], whose feature is the global one; else the mean token is).
        estimator: "jsd" (the paper's default) or "infonce".
        units: width of the critic's embeddings.
    """

    modalities = ("image", "video", "audio")

    def __init__(self, encoder: TokenEncoder, *, estimator: str = "jsd", units: int = 512) -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)}, got {estimator!r}")
        self.encoder = encoder
        self.modality = encoder.modality
        self.estimator = estimator
        self.local_net = MINet(encoder.dim, units)
        self.global_net = MINet(encoder.dim, units)

    def forward(self, batch: dict) -> Output:
        tokens = batch[self.modality.name] if self.modality.name in batch else batch["views"][0]
        enc = self.encoder(tokens)
        loss = ESTIMATORS[self.estimator](self.local_net(enc.tokens), self.global_net(enc.pooled))
        with torch.no_grad():  # collapse watch: about 1/sqrt(D) when features spread, 0 when they collapse
            normed = F.normalize(enc.pooled.float(), dim=-1)
            std = normed.std(0).mean() if normed.shape[0] > 1 else normed.new_zeros(())
        return Output(loss=loss, logs={"loss": loss.detach(), "embedding_std": std})
