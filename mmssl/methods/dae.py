"""Denoising autoencoder: Vincent et al., "Extracting and Composing Robust Features with Denoising Autoencoders",
ICML 2008 (and Vincent et al., JMLR 2010, "Stacked Denoising Autoencoders", for the emphasized loss).

Corrupt the input, encode the corrupted version, reconstruct the clean one. On patch tokens this is MAE with the
corruption applied to values instead of removing tokens: the encoder sees every token (corrupted), a decoder
predicts every token, and the loss covers every value. Corruptions, as in the papers:
- additive isotropic Gaussian noise;
- masking noise: a fixed fraction of the values of each sample forced to 0 (the dataset mean after
  normalisation); with `whole_tokens`, whole patches are dropped and replaced by a learned mask token at the
  encoder input, which is the masked-token form of the same idea;
- salt-and-pepper noise: a fixed fraction of the values set to the sample's minimum or maximum by a fair coin.
Loss: the emphasized reconstruction error L2,a of Vincent et al. (2010, sec. 4.3), squared errors weighted by
`alpha` on corrupted values and `beta` on the others (alpha = beta is the plain loss; beta = 0 full emphasis),
averaged over all values. The clean target may be each patch standardised (MAE's `norm_pix_loss`, off by
default as Vincent et al. reconstruct raw inputs); on the CPU learning test only that target gave features a k-NN
probe separates clearly better than random ones, since raw pixels spend the decoder on colour, a nuisance there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from mmssl.figures import rows_from_tokens, save_reconstruction
from mmssl.losses import from_norm_pix, norm_pix_target
from mmssl.methods.output import Output
from mmssl.models import SelfAttentionDecoder, TokenEncoder
from mmssl.tokens import RandomMask, Tokens

__all__ = ["DAE", "Corrupted", "GaussianNoise", "MaskingNoise", "SaltPepperNoise", "emphasized_mse"]


@dataclass(frozen=True)
class Corrupted:
    """A corrupted batch of patches.

    Attributes:
        values: corrupted patches (B, N, P).
        corrupted: (B, N, P) True for every value the corruption touched.
        dropped: (B, N) True for tokens removed whole (replaced by a mask token at the encoder), or None.
    """

    values: Tensor
    corrupted: Tensor
    dropped: Tensor | None = None


def _exact_fraction(shape: torch.Size, fraction: float, generator: torch.Generator | None, device) -> Tensor:
    """(B, N, P) bool with exactly int(fraction * N * P) True values per sample, chosen uniformly."""
    b, n, p = shape
    scores = torch.rand(b, n * p, generator=generator, device=device)
    count = int(fraction * n * p)
    chosen = torch.zeros(b, n * p, dtype=torch.bool, device=device)
    chosen.scatter_(1, scores.argsort(dim=1)[:, :count], True)
    return chosen.reshape(b, n, p)  # (B, N, P)


@dataclass(frozen=True)
class GaussianNoise:
    """x + std * eps with eps ~ N(0, I); every value counts as corrupted."""

    std: float = 0.5

    def __call__(self, patches: Tensor, *, generator: torch.Generator | None = None) -> Corrupted:
        noise = torch.randn(patches.shape, generator=generator, device=patches.device)
        return Corrupted(values=patches + self.std * noise, corrupted=torch.ones_like(patches, dtype=torch.bool))


@dataclass(frozen=True)
class MaskingNoise:
    """Forces a fraction of each sample's values (or, with `whole_tokens`, of its tokens) to `fill`."""

    fraction: float = 0.25
    whole_tokens: bool = False
    fill: float = 0.0

    def __call__(self, patches: Tensor, *, generator: torch.Generator | None = None) -> Corrupted:
        b, n, p = patches.shape
        if self.whole_tokens:
            dropped = RandomMask(self.fraction)(b, (n,), generator=generator, device=patches.device)  # (B, N)
            hit = dropped.unsqueeze(-1).expand(b, n, p)
        else:
            dropped, hit = None, _exact_fraction(patches.shape, self.fraction, generator, patches.device)
        values = patches.masked_fill(hit, self.fill)
        return Corrupted(values=values, corrupted=hit, dropped=dropped)


@dataclass(frozen=True)
class SaltPepperNoise:
    """Sets a fraction of each sample's values to the sample's minimum or maximum, by a fair coin flip."""

    fraction: float = 0.25

    def __call__(self, patches: Tensor, *, generator: torch.Generator | None = None) -> Corrupted:
        b = patches.shape[0]
        hit = _exact_fraction(patches.shape, self.fraction, generator, patches.device)
        low = patches.reshape(b, -1).amin(dim=1).reshape(b, 1, 1)
        high = patches.reshape(b, -1).amax(dim=1).reshape(b, 1, 1)
        coin = torch.rand(patches.shape, generator=generator, device=patches.device) < 0.5
        values = torch.where(hit, torch.where(coin, high, low), patches)
        return Corrupted(values=values, corrupted=hit)


def emphasized_mse(pred: Tensor, target: Tensor, corrupted: Tensor, *, alpha: float, beta: float) -> Tensor:
    """Vincent et al.'s L2,a: alpha * sum of squared errors on corrupted values + beta * on the rest, over numel."""
    weights = torch.where(corrupted, alpha, beta).to(torch.float32)
    return (weights * (pred.float() - target.float()).pow(2)).sum() / target.numel()


class DAE(nn.Module):
    """Denoising autoencoder over the patch tokens of the encoder's modality.

    Args:
        encoder: a `TokenEncoder`; it sees every token, corrupted.
        corruption: a callable patches -> `Corrupted` (`GaussianNoise`, `MaskingNoise`, `SaltPepperNoise`);
            default masking noise on 25 % of the values.
        alpha: loss weight of corrupted values.
        beta: loss weight of uncorrupted values (Vincent et al.'s "double emphasis" is beta = alpha / 2).
        decoder_dim: decoder width.
        decoder_depth: decoder blocks.
        decoder_heads: decoder heads.
        norm_pix_loss: reconstruct per-patch standardised clean patches instead of the clean patches.
    """

    modalities = ("image", "video", "audio")

    def __init__(self, encoder: TokenEncoder, *, corruption: Callable[[Tensor], Corrupted] | None = None,
                 alpha: float = 1.0, beta: float = 0.5, decoder_dim: int = 512, decoder_depth: int = 8,
                 decoder_heads: int = 16, norm_pix_loss: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.modality = encoder.modality
        self.corruption = corruption if corruption is not None else MaskingNoise(0.25)
        self.alpha, self.beta = alpha, beta
        self.norm_pix_loss = norm_pix_loss
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder = SelfAttentionDecoder(encoder.dim, self.modality.patch_dim, dim=decoder_dim,
                                            depth=decoder_depth, heads=decoder_heads,
                                            pos_embed=encoder.pos_kind)

    def target(self, tokens: Tokens) -> Tensor:
        """The clean patches (B, N, P) to reconstruct, optionally per-patch standardised."""
        return norm_pix_target(tokens.patches) if self.norm_pix_loss else tokens.patches.float()

    def predict(self, tokens: Tokens, noisy: Corrupted) -> Tensor:
        """Encodes every corrupted token and predicts every clean one: (B, N, P)."""
        x = self.encoder.embed(replace(tokens, patches=noisy.values, visible=None))  # (B, N, D)
        if noisy.dropped is not None:
            # a dropped patch carries no value: it enters as a learned mask token at its position, as in MAE
            pos = self.encoder.positions(tokens.grid, x)  # (N, D)
            x = torch.where(noisy.dropped.unsqueeze(-1), self.mask_token.to(x.dtype) + pos, x)
        prefix, feats = self.encoder.encode(x)
        return self.decoder(feats, None, tokens.grid, prefix=prefix)

    def forward(self, batch: dict) -> Output:
        tokens = batch[self.modality.name]
        noisy = self.corruption(tokens.patches.float())
        pred = self.predict(tokens, noisy)
        loss = emphasized_mse(pred, self.target(tokens), noisy.corrupted, alpha=self.alpha, beta=self.beta)
        return Output(loss=loss, logs={"loss": loss.detach(),
                                       "corrupted": noisy.corrupted.float().mean().detach()})

    @torch.no_grad()
    def figure(self, batch: dict, path: str | Path, *, samples: int = 4) -> Path:
        """Writes a PNG: clean input, corrupted input, reconstruction (every token) and target."""
        tokens = replace(batch[self.modality.name], visible=None)
        noisy = self.corruption(tokens.patches.float())
        pred = self.predict(tokens, noisy)
        shown = from_norm_pix(pred, tokens.patches) if self.norm_pix_loss else pred
        target = self.target(tokens) if self.norm_pix_loss else None
        # every token is predicted, so nothing is pasted back: show them all as "hidden"
        everything = replace(tokens, visible=torch.zeros(tokens.batch_size, 0, dtype=torch.long,
                                                         device=tokens.patches.device))
        rows = rows_from_tokens(everything, shown, modality=self.modality, target=target, seen=noisy.values,
                                samples=samples)
        return save_reconstruction(rows, path)
