"""Losses shared by two or more methods.

- `norm_pix_target` and `masked_mse`: MAE's reconstruction loss (He et al., 2022, `models_mae.py`
  `forward_loss`), also used by SiamMAE and Audio-MAE; VideoMAE and MultiMAE reuse the masked mean.
- `nt_xent`: SimCLR's normalised-temperature cross-entropy (Chen et al., 2020, `google-research/simclr`
  `objective.add_contrastive_loss`): each of the 2N views is an anchor, its pair the positive, the other 2N - 2
  views (from every rank) the negatives.
- `info_nce`: cross-entropy of a query against a set of keys where one is its positive (van den Oord et al.,
  2018): MoCo v3's in-batch loss (`moco-v3` `builder.contrastive_loss`) and the audio-visual CLIP-style loss.
- `normalized_mse`: BYOL's regression loss `2 - 2 cos(p, z)` (Grill et al., 2020, `byol_experiment.py`).
- `embedding_std`: the collapse watch of SimSiam (Chen & He, 2021, Fig. 2), logged by every joint-embedding method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["norm_pix_target", "from_norm_pix", "masked_mean", "masked_mse", "nt_xent", "info_nce",
           "normalized_mse", "embedding_std"]


def norm_pix_target(patches: Tensor, *, eps: float = 1e-6) -> Tensor:
    """MAE's `norm_pix_loss` target: each patch standardised over all of its values.

    `(t - mean) / sqrt(var + eps)` per patch over the p*p*C values of (B, N, P) patches, with torch's unbiased
    variance as MAE computes it.
    """
    patches = patches.float()
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)  # unbiased, as `Tensor.var` defaults to
    return (patches - mean) / (var + eps).sqrt()


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of per-token values (B, N) over the tokens where `mask` (B, N) is True (all tokens in the batch).

    MAE divides by the number of hidden tokens in the whole batch, so every hidden token weighs the same.
    """
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Squared error averaged over a patch's values, then over hidden tokens only.

    Args:
        pred: predictions for every token (B, N, P).
        target: targets (B, N, P).
        mask: (B, N), True where a token was hidden from the encoder; only those count.
    """
    per_token = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (B, N)
    return masked_mean(per_token, mask)


def from_norm_pix(pred: Tensor, patches: Tensor, *, eps: float = 1e-6) -> Tensor:
    """Inverse of `norm_pix_target` with the statistics of the true patches: maps (B, N, P) predictions back to
    the input's value space, as MAE's visualisations do when the model was trained with `norm_pix_loss`."""
    patches = patches.float()
    mean = patches.mean(dim=-1, keepdim=True)
    std = (patches.var(dim=-1, keepdim=True) + eps).sqrt()
    return pred.float() * std + mean


def nt_xent(z1: Tensor, z2: Tensor, *, temperature: float, all1: Tensor | None = None, all2: Tensor | None = None,
            offset: int = 0) -> Tensor:
    """SimCLR's NT-Xent loss, averaged over this process's 2n anchors.

    Args:
        z1: L2-normalised embeddings (n, D) of the first view of the local samples.
        z2: the same samples' second view (n, D); row i of z1 and z2 is a positive pair.
        temperature: the softmax temperature tau (0.1 in SimCLR's run.py, 0.5 for small batches).
        all1: the first views of every rank (M, D), the local rows at `offset`; None: just `z1`.
        all2: likewise for the second views.
        offset: where this rank's rows start in `all1`/`all2` (rank * n).

    Anchor z1[i] scores every view but itself: the positive all2[offset + i] against the 2M - 2 others, as in
    SimCLR's `logits_ab` / `logits_aa` with the self-similarity masked out. The official code sums the two
    directions' means; this is the paper's mean over all anchors (half of that sum). With all-gathered `all1`,
    `all2` the mean over ranks equals the single-process loss on the concatenated batch.
    """
    all1 = z1 if all1 is None else all1
    all2 = z2 if all2 is None else all2
    n, m = z1.shape[0], all1.shape[0]
    labels = torch.arange(offset, offset + n, device=z1.device)
    # (n, M): each anchor's own column in its own view (a comparison: one_hot would check the labels on the host)
    self_mask = labels[:, None] == torch.arange(m, device=z1.device)[None, :]
    losses = []
    for anchors, same, other in ((z1, all1, all2), (z2, all2, all1)):
        logits_pos = anchors @ other.T / temperature  # (n, M): the positive sits at column offset + i
        logits_same = (anchors @ same.T / temperature).masked_fill(self_mask, float("-inf"))  # (n, M)
        logits = torch.cat([logits_pos, logits_same], dim=1)  # (n, 2M)
        losses.append(F.cross_entropy(logits.float(), labels))
    return (losses[0] + losses[1]) / 2


def info_nce(query: Tensor, keys: Tensor, *, temperature: Tensor | float, offset: int = 0) -> Tensor:
    """Mean over queries of `-log softmax(q . k / tau)` at the positive key.

    Args:
        query: L2-normalised queries (n, D).
        keys: L2-normalised keys (M, D); query i's positive is key `offset + i`, all others are negatives.
        temperature: tau, a number or a tensor (a learned temperature keeps its gradient).
        offset: position of this rank's keys among gathered keys (rank * n).
    """
    logits = query @ keys.T / temperature  # (n, M)
    labels = torch.arange(offset, offset + query.shape[0], device=query.device)
    return F.cross_entropy(logits.float(), labels)


def normalized_mse(pred: Tensor, target: Tensor) -> Tensor:
    """BYOL's loss: the squared distance of the L2-normalised vectors, `2 - 2 cos(pred, target)`, batch mean."""
    p = F.normalize(pred.float(), dim=-1)
    z = F.normalize(target.float(), dim=-1)
    return (2 - 2 * (p * z).sum(dim=-1)).mean()


@torch.no_grad()
def embedding_std(z: Tensor) -> Tensor:
    """Std over the batch of L2-normalised embeddings (B, D), averaged over dimensions.

    About 1/sqrt(D) when the embeddings spread over the sphere, 0 when they collapse to one point (SimSiam).
    """
    return F.normalize(z.float(), dim=-1).std(dim=0).mean()
