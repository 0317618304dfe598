"""Losses shared by two or more methods.

- `norm_pix_target` and `masked_mse`: MAE's reconstruction loss (He et al., 2022, `models_mae.py`
  `forward_loss`), also used by SiamMAE and Audio-MAE; VideoMAE and MultiMAE reuse the masked mean.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["norm_pix_target", "from_norm_pix", "masked_mean", "masked_mse"]


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
