"""A small DCGAN-style convolutional discriminator (Radford et al. 2016), as the context encoder's adversary
(Pathak et al. 2016, `train.lua`: 4x4 stride-2 convolutions with LeakyReLU(.2), a 1-logit output).

Batch norm is replaced by group norm: the discriminator is run three times per step (real, fake, and fake with
its weights frozen for the generator's term) and batch statistics would mix those passes.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ConvDiscriminator"]


class ConvDiscriminator(nn.Module):
    """Strided convolutions down to a few pixels, then the mean of a 1-channel map: one real/fake logit per image.

    Args:
        channels: input channels.
        width: channels of the first layer (doubled at each of the following layers).
        layers: stride-2 convolutions.
    """

    def __init__(self, channels: int = 3, *, width: int = 64, layers: int = 4) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = channels
        for i in range(layers):
            c_out = width * 2 ** i
            blocks.append(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1))
            if i > 0:  # DCGAN: no normalisation on the first layer
                blocks.append(nn.GroupNorm(min(32, c_out // 4), c_out))
            blocks.append(nn.LeakyReLU(0.2))
            c_in = c_out
        blocks.append(nn.Conv2d(c_in, 1, 3, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B,) for images (B, C, H, W)."""
        return self.net(x).mean(dim=(1, 2, 3))
