"""BYOL: Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020.

An online network (encoder, projector, predictor) predicts the projection that a slowly moving target network
(an exponential moving average of online encoder and projector) gives for the other view; no negatives. Follows
`deepmind-research/byol` (`byol_experiment.py`, `configs/byol.py`, `utils/networks.py`) and REFERENCE.md §1.5:
- projector and predictor: Linear(4096)-BN-ReLU-Linear(256);
- loss `2 - 2 cos(q_1, sg(z'_2)) + 2 - 2 cos(q_2, sg(z'_1))`, averaged over the batch (symmetric);
- the target decay tau = 1 - (1 - tau_base)(cos(pi * progress) + 1) / 2, base 0.99 for 100/300 epochs and 0.996 for
  1000, set by `update(progress)` after every optimiser step;
- the target network runs with batch statistics like the online one (BYOL's target is in training mode).
Asymmetric augmentations (blur 1.0 / 0.1, solarize 0 / 0.2) are the data config's two views; BYOL's cross-replica
BN is `SyncBatchNorm`, which the recipe converts to on several GPUs (`mmssl.train.distributed.sync_batchnorm`).

Short runs: with no negatives, BYOL learns the factor that its two views share most. On CPU textures with one
colour per image (tiny ViT, 100 steps), that is the colour: the dominant-colour k-NN rises from 84% to 91%
while the texture-class k-NN falls from 78% (random init) to 65%, without collapse; none of tau 0/0.9/0.96/0.996,
a 10x predictor learning rate, 4x wider heads, blur/solarize views, 0.08 crops, full hue jitter (the brightness
then takes over), SGD or 400 steps changed that. When the colour drifts across each image, so that two crops
share the pattern but not the colour (as in natural images; `synthetic.textures(colour_field=True)`), BYOL
learns the pattern: 200 steps take the class k-NN from 92-95% at random init to 98.8-100% (three seeds; SimCLR:
94.9 -> 100%), which is the learning test. A smooth brightness field on top (crops then differ in brightness
as well) left BYOL at or below random init (73 vs 84% after 100 steps, 85.5 vs 84.4% after 300).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mmssl.losses import embedding_std, normalized_mse
from mmssl.methods.output import Output
from mmssl.methods.views import encode_views, two_views
from mmssl.models.heads import MLPHead
from mmssl.train.ema import ema_update_
from mmssl.train.schedules import cosine_increase

__all__ = ["BYOL"]


class BYOL(nn.Module):
    """Online/target networks with a predictor and the symmetric normalised-MSE loss.

    Args:
        encoder: a `TokenEncoder` (its `pooled` output and `dim` are used).
        dim: projection width (256).
        hidden_dim: hidden width of projector and predictor (4096).
        momentum: base target decay tau_base, cosine-increased to 1.
    """

    modalities = ("image", "video", "audio")

    def __init__(self, encoder: nn.Module, *, dim: int = 256, hidden_dim: int = 4096, momentum: float = 0.99) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = MLPHead(encoder.dim, dim, hidden_dim=hidden_dim)
        self.predictor = MLPHead(dim, dim, hidden_dim=hidden_dim)
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.base_momentum = self.momentum = momentum

    @torch.no_grad()
    def update(self, progress: float) -> None:
        """Sets tau for this point of training and moves the target towards the online network."""
        self.momentum = cosine_increase(progress, base=self.base_momentum)
        ema_update_(self.target_encoder, self.encoder, self.momentum)
        ema_update_(self.target_projector, self.projector, self.momentum)

    def forward(self, batch: dict) -> Output:
        view1, view2 = two_views(batch, "BYOL")
        z1, z2 = (self.projector(h) for h in encode_views(self.encoder, [view1, view2]))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1, t2 = (self.target_projector(h) for h in encode_views(self.target_encoder, [view1, view2]))
        loss = normalized_mse(p1, t2) + normalized_mse(p2, t1)
        return Output(loss=loss, logs={"loss": loss.detach(), "embedding_std": embedding_std(z1),
                                       "momentum": self.momentum})  # a host value: logged as it is
