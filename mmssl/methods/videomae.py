"""VideoMAE: Tong et al., "VideoMAE: Masked Autoencoders are Data-Efficient Learners for Self-Supervised Video
Pre-Training", NeurIPS 2022.

MAE on 2x16x16 tubelets with a very high masking ratio. Follows MCG-NJU/VideoMAE (`masking_generator.py`,
`modeling_pretrain.py`, `engine_for_pretraining.py`):
- tube masking: one spatial mask hiding `int(0.9 * H * W)` cells, tiled over every temporal slice (`TubeMask`), so
  a hidden patch cannot be copied from the same place in a neighbouring frame;
- the encoder has no [CLS] token and uses the fixed 1-D sinusoid table over all T*H*W tokens;
- the decoder is 384 wide, 4 blocks, 6 heads (ViT-B), its `encoder_to_decoder` projection has no bias, and it uses
  the same flat sinusoid positions;
- the target is built from the un-normalised clip (back in [0, 1]): each tubelet is standardised per channel over
  its 2*16*16 values, `(x - mean) / (std_unbiased + 1e-6)` (`normlize_target=True`); note this differs from MAE's
  per-patch `sqrt(var + 1e-6)` over all values;
- the loss is the mean squared error over hidden tokens only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from mmssl.figures import rows_from_tokens, save_reconstruction
from mmssl.losses import masked_mse
from mmssl.methods.output import Output
from mmssl.modalities import Modality
from mmssl.models import SelfAttentionDecoder, TokenEncoder
from mmssl.tokens import Tokens, TubeMask, ensure_mask, patchify, unpatchify

__all__ = ["VideoMAE", "tubelet_target"]


def _per_channel(tokens: Tokens, values: Tensor) -> Tensor:
    """(B, N, V*C) channel-last patches -> (B, N, V, C)."""
    b, n, _ = values.shape
    return values.reshape(b, n, -1, tokens.channels)  # (B, N, V, C)


def tubelet_target(tokens: Tokens, modality: Modality, *, normalize: bool = True, eps: float = 1e-6) -> Tensor:
    """VideoMAE's regression target (B, N, V*C) from normalised video tokens.

    The tokens are un-normalised back to [0, 1] with the modality's statistics; with `normalize`, every tubelet is
    then standardised per channel over its V = t*p*p values with the unbiased std: (x - mean) / (std + eps).
    """
    pixels = modality.denormalize(tokens.image().float())  # (B, C, T, H, W) in [0, 1]
    patches, _ = patchify(pixels, tokens.patch)  # (B, N, V*C), channel last
    if not normalize:
        return patches
    x = _per_channel(tokens, patches)  # (B, N, V, C)
    x = (x - x.mean(dim=2, keepdim=True)) / (x.std(dim=2, keepdim=True) + eps)
    return x.reshape(patches.shape)  # (B, N, V*C)


def _to_input_space(tokens: Tokens, modality: Modality, pred: Tensor, *, normalized: bool,
                    eps: float = 1e-6) -> Tensor:
    """Maps a prediction in target space back to the encoder's normalised input space (for figures).

    A standardised prediction is rescaled with the true tubelet's per-channel mean and std, as MAE-style
    visualisations do; then pixels in [0, 1] are normalised like the input.
    """
    pixels = pred.float()
    if normalized:
        truth = _per_channel(tokens, patchify(modality.denormalize(tokens.image().float()), tokens.patch)[0])
        mean, std = truth.mean(dim=2, keepdim=True), truth.std(dim=2, keepdim=True) + eps  # (B, N, 1, C)
        pixels = (_per_channel(tokens, pixels) * std + mean).reshape(pred.shape)  # (B, N, V*C)
    dense = unpatchify(pixels, tokens.grid, tokens.patch)  # (B, C, T, H, W)
    return patchify(modality.normalize(dense), tokens.patch)[0]  # (B, N, V*C)


class VideoMAE(nn.Module):
    """Masked autoencoder on video tubelets with tube masking.

    Args:
        encoder: a `TokenEncoder` on "video" tokens without [CLS], with `pos_embed="sinusoid"`.
        mask_ratio: fraction of spatial cells hidden in every temporal slice (0.9 on K400/SSv2, 0.75 on UCF101).
        decoder_dim: decoder width (384 for ViT-B).
        decoder_depth: decoder blocks (4).
        decoder_heads: decoder heads (6 for ViT-B).
        normalize_target: per-tubelet, per-channel standardised target (VideoMAE's default).
    """

    modalities = ("video",)

    def __init__(self, encoder: TokenEncoder, *, mask_ratio: float = 0.9, decoder_dim: int = 384,
                 decoder_depth: int = 4, decoder_heads: int = 6, normalize_target: bool = True) -> None:
        super().__init__()
        if encoder.num_prefix:
            raise ValueError("VideoMAE's encoder has no [CLS] token; build the TokenEncoder with cls_token=False")
        self.encoder = encoder
        self.modality = encoder.modality
        self.masking = TubeMask(mask_ratio)
        self.normalize_target = normalize_target
        self.decoder = SelfAttentionDecoder(encoder.dim, self.modality.patch_dim, dim=decoder_dim,
                                            depth=decoder_depth, heads=decoder_heads, embed_bias=False,
                                            pos_embed=encoder.pos_kind)

    def masked(self, tokens: Tokens) -> Tokens:
        """The tokens with a mask: the pipeline's when it sampled one, else a fresh tube mask."""
        return ensure_mask(tokens, self.masking)

    def target(self, tokens: Tokens) -> Tensor:
        """The regression target (B, N, V*C)."""
        return tubelet_target(tokens, self.modality, normalize=self.normalize_target)

    def predict(self, tokens: Tokens) -> Tensor:
        """Encodes the visible tubelets and predicts every cell: (B, N, V*C)."""
        enc = self.encoder(tokens)
        return self.decoder(enc.tokens, enc.visible, enc.grid)

    def forward(self, batch: dict) -> Output:
        tokens = self.masked(batch[self.modality.name])
        loss = masked_mse(self.predict(tokens), self.target(tokens), tokens.mask)
        return Output(loss=loss, logs={"loss": loss.detach()})

    @torch.no_grad()
    def figure(self, batch: dict, path: str | Path, *, samples: int = 4) -> Path:
        """Writes a reconstruction PNG (a few frames per panel) of the first `samples` clips."""
        tokens = self.masked(batch[self.modality.name])
        pred = self.predict(tokens)
        shown = _to_input_space(tokens, self.modality, pred, normalized=self.normalize_target)
        rows = rows_from_tokens(tokens, shown, modality=self.modality, target=self.target(tokens), samples=samples)
        return save_reconstruction(rows, path)
