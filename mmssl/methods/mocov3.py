"""MoCo v3: Chen, Xie & He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021.

Both views go through the encoder, a projector and a predictor (queries) and through a momentum copy of encoder
and projector (keys). Each query must find its own key among the keys of the whole batch, in both directions; no
queue. Follows `facebookresearch/moco-v3` (`moco/builder.py`, `vits.py`, `main_moco.py`) and REFERENCE.md §1.4:
- projector: 3 bias-free linear maps (2 for ResNet), 4096 hidden with BN + ReLU, 256 out with an affine-free BN;
  predictor: 2 maps, 4096 hidden, 256 out, no last BN;
- loss `ctr(q1, k2) + ctr(q2, k1)` with `ctr(q, k) = 2T * CE(q . k_all^T / T, own index)` over the keys of every
  rank (gathered without gradient), T = 0.2 for ViT (`--moco-t`);
- the momentum m rises from 0.99 to 1 along a half cosine (`--moco-m-cos`), set by `update(progress)` after every
  optimiser step (the official code moves the momentum encoder at the top of the next forward);
- ViT: the patch projection keeps its random initialisation (`--stop-grad-conv1`), which the paper found makes
  training stable: `encoder.patch_embed.requires_grad_(False)`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.losses import embedding_std, info_nce
from mmssl.methods.output import Output
from mmssl.methods.views import encode_views, two_views
from mmssl.models.heads import MLPHead
from mmssl.train.distributed import all_gather_with_grad, rank
from mmssl.train.ema import ema_update_
from mmssl.train.schedules import cosine_increase

__all__ = ["MoCoV3"]


class MoCoV3(nn.Module):
    """MoCo v3: symmetric in-batch contrast between predicted queries and momentum keys.

    Args:
        encoder: a `TokenEncoder` (its `pooled` output and `dim` are used).
        dim: output width of projector and predictor (256).
        mlp_dim: hidden width of projector and predictor (4096).
        proj_layers: linear maps in the projector (3 for ViT, 2 for ResNet).
        temperature: T (0.2 for ViT, 1.0 for ResNet).
        momentum: base momentum m, cosine-increased to 1 over training (0.99 for ViT).
        freeze_patch_embed: keep the random patch projection (`--stop-grad-conv1`).
    """

    modalities = ("image", "video", "audio")

    def __init__(self, encoder: nn.Module, *, dim: int = 256, mlp_dim: int = 4096, proj_layers: int = 3,
                 temperature: float = 0.2, momentum: float = 0.99, freeze_patch_embed: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        if freeze_patch_embed:
            encoder.patch_embed.requires_grad_(False)
        self.projector = MLPHead(encoder.dim, dim, hidden_dim=mlp_dim, layers=proj_layers, last_bn=True,
                                 bias=False)
        self.predictor = MLPHead(dim, dim, hidden_dim=mlp_dim, layers=2, bias=False)
        self.momentum_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.momentum_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.base_momentum, self.temperature = momentum, temperature
        self.momentum = momentum

    @torch.no_grad()
    def update(self, progress: float) -> None:
        """Sets m for this point of training (cosine from the base to 1) and moves the momentum branch."""
        self.momentum = cosine_increase(progress, base=self.base_momentum)
        ema_update_(self.momentum_encoder, self.encoder, self.momentum)
        ema_update_(self.momentum_projector, self.projector, self.momentum)

    def contrast(self, q: Tensor, k: Tensor) -> Tensor:
        """`2T * InfoNCE` of queries (n, dim) against the keys (n, dim) of every rank; k needs no gradient."""
        q = F.normalize(q, dim=-1)
        k_all = all_gather_with_grad(F.normalize(k, dim=-1))  # (n * world, dim)
        return info_nce(q, k_all, temperature=self.temperature, offset=rank() * q.shape[0]) * 2 * self.temperature

    def forward(self, batch: dict) -> Output:
        view1, view2 = two_views(batch, "MoCo v3")
        # heads per view: their BatchNorm sees one view's batch, as in the official forward
        q1, q2 = (self.predictor(self.projector(h)) for h in encode_views(self.encoder, [view1, view2]))
        with torch.no_grad():
            k1, k2 = (self.momentum_projector(h) for h in encode_views(self.momentum_encoder, [view1, view2]))
        loss = self.contrast(q1, k2) + self.contrast(q2, k1)
        return Output(loss=loss, logs={"loss": loss.detach(), "embedding_std": embedding_std(q1),
                                       "momentum": self.momentum})  # a host value: logged as it is
