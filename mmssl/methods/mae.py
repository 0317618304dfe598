"""MAE: He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022.

Hide most patches of an image at random, encode only the visible ones, and let a light decoder predict the pixels
of the hidden ones. Follows facebookresearch/mae `models_mae.py`:
- per-sample uniform random masking that keeps `int(N * (1 - 0.75))` tokens (`RandomMask`);
- the encoder sees the visible tokens plus [CLS], with fixed 2-D sin-cos positions;
- the decoder (512 wide, 8 blocks, 16 heads) gets the projected visible features, a shared learned mask token at
  every hidden cell and its own fixed sin-cos positions, and a linear head predicts the p*p*C raw values per patch;
- the loss is the per-patch mean squared error averaged over hidden patches only; with `norm_pix_loss` (what
  PRETRAIN.md uses for representation learning) each target patch is standardised over its p*p*C values with
  the unbiased variance, `(t - mean) / sqrt(var + 1e-6)`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from mmssl.figures import masked_reconstruction_figure
from mmssl.losses import masked_mse, norm_pix_target
from mmssl.methods.output import Output
from mmssl.models import SelfAttentionDecoder, TokenEncoder
from mmssl.tokens import RandomMask, Tokens, ensure_mask

__all__ = ["MAE"]


class MAE(nn.Module):
    """Masked autoencoder on the patch tokens of the encoder's modality.

    Args:
        encoder: a `TokenEncoder` (MAE: ViT with [CLS] and sin-cos positions); its modality names the batch key.
        mask_ratio: fraction of tokens hidden per sample when the batch brings no mask.
        decoder_dim: decoder width.
        decoder_depth: decoder blocks.
        decoder_heads: decoder attention heads.
        norm_pix_loss: standardise each target patch (MAE's `--norm_pix_loss`).
    """

    modalities = ("image",)

    def __init__(self, encoder: TokenEncoder, *, mask_ratio: float = 0.75, decoder_dim: int = 512,
                 decoder_depth: int = 8, decoder_heads: int = 16, norm_pix_loss: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.modality = encoder.modality
        self.masking = RandomMask(mask_ratio)
        self.norm_pix_loss = norm_pix_loss
        self.decoder = SelfAttentionDecoder(encoder.dim, self.modality.patch_dim, dim=decoder_dim,
                                            depth=decoder_depth, heads=decoder_heads)

    def masked(self, tokens: Tokens) -> Tokens:
        """The tokens with a mask: the pipeline's when it sampled one, else a fresh random one."""
        return ensure_mask(tokens, self.masking)

    def target(self, tokens: Tokens) -> Tensor:
        """What the decoder regresses (B, N, P): raw patches, or per-patch standardised ones."""
        return norm_pix_target(tokens.patches) if self.norm_pix_loss else tokens.patches.float()

    def predict(self, tokens: Tokens) -> Tensor:
        """Encodes the visible tokens and decodes a prediction for every cell: (B, N, P)."""
        enc = self.encoder(tokens)
        return self.decoder(enc.tokens, enc.visible, enc.grid, prefix=enc.prefix)

    def forward(self, batch: dict) -> Output:
        tokens = self.masked(batch[self.modality.name])
        pred = self.predict(tokens)
        loss = masked_mse(pred, self.target(tokens), tokens.mask)
        return Output(loss=loss, logs={"loss": loss.detach()})

    @torch.no_grad()
    def figure(self, batch: dict, path: str | Path, *, samples: int = 4) -> Path:
        """Writes a reconstruction PNG of the first `samples` items of `batch`."""
        return masked_reconstruction_figure(self, batch, path, samples=samples)
