"""SiamMAE: Gupta et al., "Siamese Masked Autoencoders", NeurIPS 2023.

Predict a mostly hidden future frame from a fully visible past frame, so the model has to learn where things
move. There is no official code; this follows the paper and the re-implementation in alexandre-eymael/CropMAE
(`models/SiamMAE.py`):
- two frames of one video (the data layer samples a gap in [4, 48] and applies the same crop and flip to both);
- one shared (siamese) encoder runs on each frame separately: the past frame unmasked, the future frame with 95 %
  of its patches hidden at random;
- the decoder is a stack of cross-attention blocks in which the future frame's tokens (visible features plus mask
  tokens) attend to the past frame's tokens; the paper's best "cross-self" variant adds self-attention among the
  future tokens in every block (`cross_self`); ViT-S uses width 256, 4 blocks, 8 heads;
- the loss is MAE's normalised-pixel MSE on the future frame's hidden patches only.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from mmssl.figures import rows_from_tokens, save_reconstruction
from mmssl.losses import from_norm_pix, masked_mse, norm_pix_target
from mmssl.methods.output import Output
from mmssl.models import CrossAttentionDecoder, TokenEncoder
from mmssl.tokens import RandomMask, Tokens

__all__ = ["SiamMAE"]


class SiamMAE(nn.Module):
    """Siamese masked autoencoder on frame pairs (`batch["frames"]`: [past, future] image `Tokens`).

    Args:
        encoder: a `TokenEncoder` on "image" tokens, shared by both frames.
        mask_ratio: fraction of the future frame's patches hidden (0.95).
        decoder_dim: decoder width (256 for ViT-S, 512 for ViT-B).
        decoder_depth: cross-attention blocks (4 for ViT-S, 8 for ViT-B).
        decoder_heads: decoder heads (8 for ViT-S, 16 for ViT-B).
        cross_self: add self-attention among future tokens in each block (the paper's best decoder).
        norm_pix_loss: per-patch standardised target, as MAE.
    """

    modalities = ("image",)

    def __init__(self, encoder: TokenEncoder, *, mask_ratio: float = 0.95, decoder_dim: int = 256,
                 decoder_depth: int = 4, decoder_heads: int = 8, cross_self: bool = True,
                 norm_pix_loss: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.modality = encoder.modality
        self.masking = RandomMask(mask_ratio)
        self.norm_pix_loss = norm_pix_loss
        self.decoder = CrossAttentionDecoder(encoder.dim, self.modality.patch_dim, dim=decoder_dim,
                                             depth=decoder_depth, heads=decoder_heads, self_attention=cross_self)

    def frames(self, batch: dict) -> tuple[Tokens, Tokens]:
        """The past frame with every token visible and the masked future frame."""
        frames = batch["frames"]
        if len(frames) != 2:
            raise ValueError(f"SiamMAE needs batch['frames'] = [past, future], got {len(frames)} frames")
        past, future = frames
        past = replace(past, visible=None)  # the past frame is never masked
        if future.visible is None:
            mask = self.masking(future.batch_size, future.grid, device=future.patches.device)
            future = future.with_mask(mask, self.masking.visible_count(future.grid))
        return past, future

    def target(self, future: Tokens) -> Tensor:
        """The future frame's regression target (B, N, P)."""
        return norm_pix_target(future.patches) if self.norm_pix_loss else future.patches.float()

    def predict(self, past: Tokens, future: Tokens) -> Tensor:
        """Encodes both frames with the shared encoder and predicts every future cell: (B, N, P)."""
        ctx = self.encoder(past)
        enc = self.encoder(future)
        # the past frame's [CLS] joins the context with no position, its patches with their grid positions
        pos = self.decoder.queries.positions(past.grid, ctx.tokens)  # (N, dim)
        context = torch.cat([ctx.prefix, ctx.tokens], dim=1)  # (B, p+N, D)
        context_pos = torch.cat([pos.new_zeros(ctx.prefix.shape[1], pos.shape[1]), pos]).unsqueeze(0)  # (1, p+N, dim)
        return self.decoder(enc.tokens, enc.visible, enc.grid, context, context_pos=context_pos)

    def forward(self, batch: dict) -> Output:
        past, future = self.frames(batch)
        loss = masked_mse(self.predict(past, future), self.target(future), future.mask)
        return Output(loss=loss, logs={"loss": loss.detach()})

    @torch.no_grad()
    def figure(self, batch: dict, path: str | Path, *, samples: int = 4) -> Path:
        """Writes a reconstruction PNG of the future frames of the first `samples` pairs."""
        past, future = self.frames(batch)
        pred = self.predict(past, future)
        shown = from_norm_pix(pred, future.patches) if self.norm_pix_loss else pred
        target = self.target(future) if self.norm_pix_loss else None
        rows = rows_from_tokens(future, shown, modality=self.modality, target=target, samples=samples)
        return save_reconstruction(rows, path)
