"""Context encoder: Pathak et al., "Context Encoders: Feature Learning by Inpainting", CVPR 2016
(REFERENCE.md §1.12; `pathak22/context-encoder` `train.lua`).

A region of the image is removed, the hole filled with the mean pixel (117, 104, 123) / 255, and the network
predicts the pixels of the region from its context. The predicted region extends `overlap` pixels (4 in the
paper) beyond the filled hole, into pixels the network sees, and the L2 weight on that border is x10:
    L_rec = mean over the region's values of W * (x_hat - x)^2,   W = 10 on the border, 1 inside the hole.
The joint loss is lambda_rec * L_rec + lambda_adv * L_adv (lambda_rec = .999, lambda_adv = .001), L_adv the
non-saturating GAN loss -log D(G(x)) of a small convolutional discriminator; `adversarial=False` trains on L2 only.
The generator is an encoder-decoder, as in the paper: the encoder reads the image with the hole filled, and a
small self-attention decoder over all its tokens (standing in for the paper's channel-wise fully connected layer
and up-convolutions, which also mix all positions) predicts each token's pixels; the encoder's features are the
representation, so they need not be pixels themselves (`decoder_depth=0`: one linear map per token instead).
Regions: `CentreRegion` (the central half of each side, as in the paper), `RandomBlocks` (several smaller blocks
covering about 1/4 of the image) and `RandomShape` (a smooth random shape covering exactly a given fraction). Each
image's region is drawn from its own generator, `sample_generator(seed, epoch, key, "region")` with the
(seed, epoch, key) of `batch["ids"]`, as the device stage draws MAE's masks: the same region for a sample whatever
batch, device or rank it is in.

One optimiser, one backward: the recipe steps a single AdamW over `method.parameters()`. The generator and
discriminator terms are summed into one loss whose gradient gives each network its own objective:
- the discriminator loss BCE(D(x), 1) + BCE(D(x_hat.detach()), 0) reaches only D (x_hat is detached);
- the generator's term BCE(D'(x_hat), 1) is evaluated with D' = D's weights detached (`functional_call`), so it
  reaches only the generator, through x_hat.
So the one sum is the simultaneous-update form of the paper's alternating steps (D then G, each with Adam); Adam's
per-parameter scaling keeps the two networks' steps independent of each other's loss scale. The paper's x10
generator learning rate is not reproduced (one learning rate for all); the discriminator sees the whole image with
the prediction pasted into the region (the paper's centre crop does not extend to arbitrary shapes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mmssl.methods.colorization import encoder_stride, save_panels
from mmssl.methods.output import Output
from mmssl.models.decoders import SelfAttentionDecoder
from mmssl.models.dense import DenseHead
from mmssl.models.gan import ConvDiscriminator
from mmssl.pretext import batch_ids
from mmssl.rng import sample_generator

__all__ = ["ContextEncoder", "CentreRegion", "RandomBlocks", "RandomShape", "border_weights", "MEAN_PIXEL"]

MEAN_PIXEL = (117.0 / 255, 104.0 / 255, 123.0 / 255)  # the fill of train.lua, in [0, 1] RGB


@dataclass(frozen=True)
class CentreRegion:
    """The central square whose side is `fraction` of the image side (64 of 128 in the paper)."""

    fraction: float = 0.5

    def __call__(self, b: int, size: tuple[int, int], *, generator: torch.Generator | None = None) -> Tensor:
        h, w = size
        rh, rw = round(h * self.fraction), round(w * self.fraction)
        mask = torch.zeros(b, 1, h, w, dtype=torch.bool)
        mask[:, :, (h - rh) // 2:(h - rh) // 2 + rh, (w - rw) // 2:(w - rw) // 2 + rw] = True
        return mask


@dataclass(frozen=True)
class RandomBlocks:
    """Square blocks of side `block` * image side at random places, added until `coverage` of the image is hit."""

    coverage: float = 0.25
    block: float = 0.25

    def __call__(self, b: int, size: tuple[int, int], *, generator: torch.Generator | None = None) -> Tensor:
        h, w = size
        bh, bw = max(1, round(h * self.block)), max(1, round(w * self.block))
        mask = torch.zeros(b, 1, h, w, dtype=torch.bool)
        for i in range(b):
            while mask[i].float().mean() < self.coverage:
                y = int(torch.randint(0, h - bh + 1, (1,), generator=generator))
                x = int(torch.randint(0, w - bw + 1, (1,), generator=generator))
                mask[i, :, y:y + bh, x:x + bw] = True
        return mask


@dataclass(frozen=True)
class RandomShape:
    """A smooth random shape covering exactly round(coverage * H * W) pixels: the top values of low-resolution
    noise, upsampled bicubically (train_random.lua thresholds resized noise the same way)."""

    coverage: float = 0.25
    detail: int = 4

    def __call__(self, b: int, size: tuple[int, int], *, generator: torch.Generator | None = None) -> Tensor:
        h, w = size
        noise = torch.rand(b, 1, self.detail, self.detail, generator=generator)
        field = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False).flatten(1)  # (B, H*W)
        count = round(self.coverage * h * w)
        mask = torch.zeros_like(field, dtype=torch.bool)
        mask.scatter_(1, field.topk(count, dim=1).indices, True)
        return mask.reshape(b, 1, h, w)  # (B, H*W) -> (B, 1, H, W)


def border_weights(region: Tensor, *, overlap: int, weight: float = 10.0) -> tuple[Tensor, Tensor]:
    """The hole (the region eroded by `overlap` pixels) and the per-pixel L2 weights (B, 1, H, W) on the region:
    `weight` on the border ring, 1 in the hole, 0 outside."""
    if overlap > 0:
        outside = (~region).float()
        grown = F.max_pool2d(F.pad(outside, (overlap,) * 4, value=1.0), 2 * overlap + 1, stride=1)
        hole = region & (grown == 0)
    else:
        hole = region
    weights = torch.where(hole, 1.0, torch.where(region, weight, 0.0))
    return hole, weights


class ContextEncoder(nn.Module):
    """Inpainting from context with L2 (border x10) and an optional adversarial loss.

    Args:
        encoder: a `TokenEncoder` or `CNNEncoder` over RGB images; it sees the whole image with the hole filled.
        region: a region sampler (`CentreRegion`, `RandomBlocks`, `RandomShape`); default the centre.
        overlap: pixels of the predicted border around the hole (4 in the paper).
        overlap_weight: L2 weight of that border relative to the hole (10 in the paper).
        lambda_rec: weight of the reconstruction loss.
        lambda_adv: weight of the adversarial loss.
        adversarial: False trains on L2 alone (no discriminator is built).
        disc_width: first-layer channels of the discriminator.
        decoder_depth: self-attention blocks between the encoder and the pixel head (the paper's decoder after
            its channel-wise fully connected layer, which mixes all positions); 0 maps each token to its pixels
            with one linear layer, so the encoder's own features must be pixels.
        decoder_dim: decoder width.
        decoder_heads: decoder attention heads.
    """

    modalities = ("image",)

    def __init__(self, encoder: nn.Module, *, region=None, overlap: int = 4, overlap_weight: float = 10.0,
                 lambda_rec: float = 0.999, lambda_adv: float = 0.001, adversarial: bool = True,
                 disc_width: int = 64, decoder_depth: int = 2, decoder_dim: int = 256,
                 decoder_heads: int = 8) -> None:
        super().__init__()
        self.encoder = encoder
        self.modality = encoder.modality
        self.region = region if region is not None else CentreRegion()
        self.overlap, self.overlap_weight = overlap, overlap_weight
        self.lambda_rec, self.lambda_adv = lambda_rec, lambda_adv
        channels = self.modality.channels
        stride = encoder_stride(encoder)
        self.decoder = (SelfAttentionDecoder(encoder.dim, channels * stride * stride, dim=decoder_dim,
                                             depth=decoder_depth, heads=decoder_heads) if decoder_depth else None)
        self.head = DenseHead(encoder.dim, channels, subpixel=stride) if self.decoder is None else None
        self.stride = stride
        self.discriminator = ConvDiscriminator(channels, width=disc_width) if adversarial else None

    def fill(self, images: Tensor) -> Tensor:
        """The mean pixel, normalised as the images are: (1, C, 1, 1)."""
        mean = torch.tensor(MEAN_PIXEL, device=images.device, dtype=images.dtype).reshape(1, -1, 1, 1)
        return self.modality.normalize(mean)

    def regions(self, images: Tensor, ids: list[tuple[int, int, str]] | None = None) -> Tensor:
        """The region (B, 1, H, W) of each image, each from its own generator (`ids`: see `batch_ids`)."""
        size = tuple(images.shape[-2:])
        ids = ids or batch_ids({}, images.shape[0])
        masks = [self.region(1, size, generator=sample_generator(s, e, k, "region")) for s, e, k in ids]
        return torch.cat(masks).to(images.device)

    def inpaint(self, images: Tensor, hole: Tensor) -> Tensor:
        """The predicted image (B, C, H, W) (normalised) from `images` with `hole` filled by the mean pixel."""
        seen = torch.where(hole, self.fill(images), images)
        encoded = self.encoder(self.modality.tokenize(seen))
        if self.decoder is None:
            return self.head(encoded, tuple(images.shape[-2:]))
        b, c, r = images.shape[0], self.modality.channels, self.stride
        h, w = encoded.grid
        x = self.decoder(encoded.tokens, None, encoded.grid, prefix=encoded.prefix)  # (B, N, C*r*r)
        x = x.reshape(b, h, w, c, r, r).permute(0, 3, 1, 4, 2, 5)  # (B, N, C*r*r) -> (B, C, h, r, w, r)
        x = x.reshape(b, c, h * r, w * r)  # (B, C, h, r, w, r) -> (B, C, h*r, w*r)
        if x.shape[-2:] != images.shape[-2:]:
            x = F.interpolate(x, size=tuple(images.shape[-2:]), mode="bilinear", align_corners=False)
        return x

    def reconstruction_loss(self, pred: Tensor, images: Tensor, weights: Tensor) -> Tensor:
        """Mean over the region's values of weights * squared error."""
        count = (weights > 0).sum() * images.shape[1]
        return (weights * (pred.float() - images.float()).pow(2)).sum() / count.clamp_min(1)

    def forward(self, batch: dict) -> Output:
        images = batch[self.modality.name].image().float()  # (B, C, H, W), normalised
        region = self.regions(images, batch_ids(batch, images.shape[0]))
        hole, weights = border_weights(region, overlap=self.overlap, weight=self.overlap_weight)
        pred = self.inpaint(images, hole)
        rec = self.reconstruction_loss(pred, images, weights)
        logs = {"rec": rec.detach()}
        if self.discriminator is None:
            return Output(loss=rec, logs={"loss": rec.detach(), **logs})
        fake = torch.where(region, pred, images)  # the prediction pasted into its context
        ones = torch.ones(images.shape[0], device=images.device)
        d_real = self.discriminator(images)
        d_fake = self.discriminator(fake.detach())
        loss_d = (F.binary_cross_entropy_with_logits(d_real, ones)
                  + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(ones)))
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        adv = F.binary_cross_entropy_with_logits(functional_call(self.discriminator, frozen, (fake,)), ones)
        loss_g = self.lambda_rec * rec + self.lambda_adv * adv
        logs.update(adv=adv.detach(), disc=loss_d.detach(),
                    d_acc=((d_real > 0).float().mean() + (d_fake < 0).float().mean()).detach() / 2)
        return Output(loss=loss_g + loss_d, logs={"loss": loss_g.detach(), **logs})

    @torch.no_grad()
    def figure(self, batch: dict, path: str | Path, *, samples: int = 4, l2_only: nn.Module | None = None) -> Path:
        """Writes a PNG: input with the hole, the L2-only inpainting (from `l2_only`, a ContextEncoder trained
        without the adversarial term, when given), this model's inpainting, and the original."""
        images = batch[self.modality.name].image().float()
        region = self.regions(images, batch_ids(batch, images.shape[0]))
        hole, _ = border_weights(region, overlap=self.overlap)
        shown = [torch.where(hole, self.fill(images), images)]
        for model in ([l2_only] if l2_only is not None else []) + [self]:
            shown.append(torch.where(region, model.inpaint(images, hole), images))
        shown.append(images)
        return save_panels([self.modality.denormalize(x).clamp(0, 1) for x in shown], path, samples=samples)
