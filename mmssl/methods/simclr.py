"""SimCLR: Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020.

Two augmented views of every sample go through the encoder and a projection MLP; the L2-normalised projections of
a sample's two views attract, and all other views in the batch repel (NT-Xent). Follows
`google-research/simclr` (`objective.add_contrastive_loss`, `model.ProjectionHead`) and REFERENCE.md §1.2:
- `hidden_norm=True`: the projections are L2-normalised; temperature 0.1 (run.py; 0.5 suits small batches);
- `proj_head_mode=nonlinear`: Linear-BN-ReLU then Linear with a shift-free BN, width = the encoder's, 128 out; 2
  layers in v1, 3 in v2; both views go through the head as one batch, so its BatchNorm sees 2N samples;
- across processes the projections are all-gathered *with gradients* (`all_gather_with_grad`), so each anchor
  meets 2(N * world - 1) negatives and every rank's gradient reaches the other ranks' samples;
- the encoder feature is its pooled output ([CLS], or the token mean when there is none).
Augmentations (crop, colour jitter 0.8 at strength 1, grayscale 0.2, blur 0.5) are the data config's views.
Because it reads `Tokens`, the same module trains on video clips and spectrograms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.losses import embedding_std, nt_xent
from mmssl.methods.output import Output
from mmssl.methods.views import encode_views, two_views
from mmssl.models.heads import MLPHead
from mmssl.train.distributed import all_gather_with_grad, rank

__all__ = ["SimCLR"]


class SimCLR(nn.Module):
    """Contrastive learning of two views with the NT-Xent loss.

    Args:
        encoder: a `TokenEncoder` (or any module whose output has `pooled` (B, D) and which has `dim`).
        proj_dim: output width of the projection head (128).
        hidden_dim: hidden width of the head; None uses the encoder's width, as SimCLR does.
        proj_layers: linear maps in the head (2 in SimCLR v1, 3 in v2).
        temperature: NT-Xent temperature.
    """

    modalities = ("image", "video", "audio")

    def __init__(self, encoder: nn.Module, *, proj_dim: int = 128, hidden_dim: int | None = None,
                 proj_layers: int = 2, temperature: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.temperature = temperature
        self.head = MLPHead(encoder.dim, proj_dim, hidden_dim=hidden_dim or encoder.dim, layers=proj_layers,
                            last_bn=True, last_bn_scale=True)

    def forward(self, batch: dict) -> Output:
        view1, view2 = two_views(batch, "SimCLR")
        h1, h2 = encode_views(self.encoder, [view1, view2])
        n = h1.shape[0]
        z = F.normalize(self.head(torch.cat([h1, h2])), dim=-1)  # (2n, proj_dim): one BN batch for both views
        z1, z2 = z[:n], z[n:]
        all1, all2 = all_gather_with_grad(z1), all_gather_with_grad(z2)  # (n * world, proj_dim) each
        loss = nt_xent(z1, z2, temperature=self.temperature, all1=all1, all2=all2, offset=rank() * n)
        with torch.no_grad():
            # how often the positive is the nearest of all views (the official code logs this "contrast acc")
            sim = z1 @ torch.cat([all2, all1]).T  # (n, 2M)
            own = rank() * n + torch.arange(n, device=z.device)  # this rank's rows among the gathered ones
            columns = torch.arange(sim.shape[1], device=z.device)[None, :]  # (1, 2M)
            sim = sim.masked_fill(columns == (all2.shape[0] + own)[:, None], float("-inf"))  # not itself
            acc = (sim.argmax(1) == own).float().mean()
        return Output(loss=loss, logs={"loss": loss.detach(), "embedding_std": embedding_std(z1),
                                       "contrast_acc": acc})
