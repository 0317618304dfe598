"""Audio-MAE: Huang et al., "Masked Autoencoders that Listen", NeurIPS 2022.

MAE on log-mel spectrograms. Follows facebookresearch/AudioMAE (`models_mae.py`, `main_pretrain.py`,
`submit_pretrain_audioset2M.sh`):
- input: a (1024 time x 128 mel) Kaldi fbank normalised with (x - mean) / (2 * std) (the `audio` modality and the
  data layer), cut into 16x16 patches on a 64x8 (time, frequency) grid;
- unstructured random masking of 80 % of the patches, the encoder sees the visible ones plus [CLS] with 2-D
  sin-cos positions;
- decoder either global (`decoder_mode=0`: an MAE decoder, 8 blocks) or local (`decoder_mode=1`, used for the
  AudioSet-2M run): 16 shifted-window blocks at width 512 with 16 heads, (4, 4) windows on the 64x8 grid, shifted
  by (2, 0) on odd blocks so only the time axis is shifted; the [CLS] token is dropped before the local decoder;
- the loss is MAE's `norm_pix_loss` MSE on hidden patches only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from mmssl.figures import masked_reconstruction_figure
from mmssl.losses import masked_mse, norm_pix_target
from mmssl.methods.output import Output
from mmssl.models import SelfAttentionDecoder, TokenEncoder, WindowDecoder
from mmssl.tokens import RandomMask, Tokens, ensure_mask

__all__ = ["AudioMAE"]


class AudioMAE(nn.Module):
    """Masked autoencoder on spectrogram patches with a global or a local (shifted-window) decoder.

    Args:
        encoder: a `TokenEncoder` on "audio" tokens (ViT with [CLS] and sin-cos positions).
        mask_ratio: fraction of patches hidden per sample (0.8).
        decoder_dim: decoder width (512).
        decoder_depth: decoder blocks (8 global, 16 local).
        decoder_heads: decoder heads (16).
        decoder_window: None for the global decoder; a (time, frequency) window such as (4, 4) for the local one.
        decoder_shift: the roll applied on odd local blocks ((2, 0): time only).
        norm_pix_loss: per-patch standardised target.
    """

    modalities = ("audio",)

    def __init__(self, encoder: TokenEncoder, *, mask_ratio: float = 0.8, decoder_dim: int = 512,
                 decoder_depth: int = 8, decoder_heads: int = 16, decoder_window: Sequence[int] | None = None,
                 decoder_shift: Sequence[int] = (2, 0), norm_pix_loss: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.modality = encoder.modality
        self.masking = RandomMask(mask_ratio)
        self.norm_pix_loss = norm_pix_loss
        out_dim = self.modality.patch_dim
        self.local = decoder_window is not None
        if self.local:
            self.decoder = WindowDecoder(encoder.dim, out_dim, dim=decoder_dim, depth=decoder_depth,
                                         heads=decoder_heads, window=tuple(decoder_window),
                                         shift=tuple(decoder_shift))
        else:
            self.decoder = SelfAttentionDecoder(encoder.dim, out_dim, dim=decoder_dim, depth=decoder_depth,
                                                heads=decoder_heads)

    def masked(self, tokens: Tokens) -> Tokens:
        """The tokens with a mask: the pipeline's when it sampled one, else a fresh random one."""
        return ensure_mask(tokens, self.masking)

    def target(self, tokens: Tokens) -> Tensor:
        """The regression target (B, N, P)."""
        return norm_pix_target(tokens.patches) if self.norm_pix_loss else tokens.patches.float()

    def predict(self, tokens: Tokens) -> Tensor:
        """Encodes the visible patches and predicts every cell: (B, N, P)."""
        enc = self.encoder(tokens)
        if self.local:  # windows tile the grid; [CLS] has no cell, so Audio-MAE drops it here
            return self.decoder(enc.tokens, enc.visible, enc.grid)
        return self.decoder(enc.tokens, enc.visible, enc.grid, prefix=enc.prefix)

    def forward(self, batch: dict) -> Output:
        tokens = self.masked(batch[self.modality.name])
        loss = masked_mse(self.predict(tokens), self.target(tokens), tokens.mask)
        return Output(loss=loss, logs={"loss": loss.detach()})

    @torch.no_grad()
    def figure(self, batch: dict, path: str | Path, *, samples: int = 4) -> Path:
        """Writes a PNG of spectrogram reconstructions (time across, frequency up) of the first `samples` clips."""
        return masked_reconstruction_figure(self, batch, path, samples=samples)
