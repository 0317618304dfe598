"""CNNEncoder: a timm convolutional network used where a method needs a CNN (CPC, colour tracking, pretext tasks).

It reads the same inputs as `TokenEncoder` (a `Tokens` batch, unpatchified back to its dense tensor) or a dense
(B, C, H, W) tensor, and returns the same `Encoded` output: the feature map flattened into tokens on its grid,
mean-pooled into one vector. So evaluation (k-NN, probes, propagation via `forward_dense`) treats both alike.
"""

from __future__ import annotations

import timm
import torch
from torch import Tensor, nn

from mmssl.modalities import Modality, get_modality
from mmssl.models.encoder import Encoded
from mmssl.tokens import Tokens

__all__ = ["CNNEncoder"]


class CNNEncoder(nn.Module):
    """A timm CNN trunk (no classifier, no pooling) over images or any dense modality.

    Args:
        name: a timm model name, e.g. "resnet18", "resnet50".
        modality: the modality it reads (sets the input channels and the name tokens must carry).
        output_stride: 8 or 16 for dilated, denser feature maps (colour tracking uses 8); None keeps 32.
        drop_path: stochastic depth rate.
    """

    def __init__(self, name: str = "resnet18", *, modality: str | Modality = "image", output_stride: int | None = None,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.name = name
        self.modality = get_modality(modality)
        kwargs = {"output_stride": output_stride} if output_stride else {}
        try:
            self.trunk = timm.create_model(name, pretrained=False, num_classes=0, global_pool="",
                                           in_chans=self.modality.channels, drop_path_rate=drop_path, **kwargs)
        except RuntimeError as err:  # timm's error for an unknown name
            raise ValueError(f"unknown CNN {name!r}: {err}") from None
        self.dim = int(self.trunk.num_features)
        self.cls_token = None

    @property
    def num_prefix(self) -> int:
        return 0

    def _dense_input(self, x: Tokens | Tensor) -> Tensor:
        if isinstance(x, Tokens):
            if x.modality != self.modality.name:
                raise ValueError(f"CNN built for {self.modality.name!r} inputs got {x.modality!r} tokens")
            if x.visible is not None and x.num_visible != x.num_tokens:
                raise ValueError("a CNN sees whole images: drop the token mask (or zero the hidden patches first)")
            x = x.image()  # (B, C, H, W)
        if x.dim() != 4 or x.shape[1] != self.modality.channels:
            raise ValueError(f"CNN expects (B, {self.modality.channels}, H, W), got {tuple(x.shape)}")
        return x.float()

    def forward_dense(self, x: Tokens | Tensor) -> Tensor:
        """The feature map (B, D, h, w)."""
        return self.trunk(self._dense_input(x))

    def forward(self, x: Tokens | Tensor) -> Encoded:
        """Feature map as tokens (B, h*w, D) on its grid, and its mean as the pooled feature."""
        fmap = self.forward_dense(x)
        b, d, h, w = fmap.shape
        tokens = fmap.flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D)
        return Encoded(tokens=tokens, prefix=tokens[:, :0], pooled=tokens.mean(1), visible=None, grid=(h, w))
