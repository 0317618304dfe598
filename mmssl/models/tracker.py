"""The embedding network of colorization-based tracking (Vondrick et al., "Tracking Emerges by Colorizing
Videos", ECCV 2018; no official code, see REFERENCE.md §1.19).

Per the paper and the re-implementation in `wbaek/tracking_via_colorization` (`networks/colorizer.py`):
- the input is grayscale: colour must not leak into the features, or copying colour would be trivial;
- a ResNet-18 with output stride 8 runs on each frame (32 x 32 features at 256 px);
- a 3-D conv stack of 5 layers with spatial dilations 1, 2, 4, 8, 16 mixes space and time; each layer is factorised
  as a dilated (1, 3, 3) spatial conv then a (3, 1, 1) temporal conv, with batch norm and ReLU;
- a 1 x 1 x 1 conv gives the 64-d embedding.

`forward` maps normalised frames (B, 3, H, W) to embeddings (B, 64, H/8, W/8), the dense-feature contract of
`mmssl.eval.encoders.CNNFeatures`, so the label-propagation evaluation reads this encoder as it is. A single frame
is a clip of length 1 (the temporal convs then see only their centre tap).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from mmssl.color import rgb_to_lab
from mmssl.models.cnn import CNNEncoder
from mmssl.modalities import Modality
from mmssl.tokens import Tokens

__all__ = ["TrackerEncoder", "grayscale"]


def grayscale(x: Tensor, modality: Modality) -> Tensor:
    """Normalised RGB (B, 3, H, W) -> the same images in gray (Lab lightness), normalised, 3 channels.

    Lightness L / 100 is put in all three channels, so an ImageNet-shaped trunk reads it unchanged and no chroma
    survives (a weighted RGB sum would keep a trace of hue in the per-channel normalisation).
    """
    rgb = modality.denormalize(x.float()).clamp(0, 1)
    light = rgb_to_lab(rgb)[:, :1] / 100.0  # (B, 1, H, W) in [0, 1]
    return modality.normalize(light.expand(-1, 3, -1, -1))  # (B, 3, H, W)


class TrackerEncoder(nn.Module):
    """ResNet at stride 8 per frame, then a dilated (2+1)-D conv stack and a linear embedding.

    Args:
        cnn: timm name of the per-frame trunk ("resnet18" in the paper).
        modality: image modality of the frames (3 channels).
        output_stride: stride of the trunk's feature map (8: 32 x 32 at 256 px).
        dim: embedding size (64).
        width: channels of the 3-D conv stack.
        dilations: spatial dilation of each 3-D layer (1, 2, 4, 8, 16).
        temporal_kernel: temporal extent of each layer's time conv (3; 1 makes the stack per-frame).
        gray: convert the frames to grayscale first (the method's premise; off only for ablations).
    """

    def __init__(self, cnn: str = "resnet18", *, modality: str | Modality = "image", output_stride: int = 8,
                 dim: int = 64, width: int = 256, dilations: Sequence[int] = (1, 2, 4, 8, 16),
                 temporal_kernel: int = 3, gray: bool = True) -> None:
        super().__init__()
        self.cnn = CNNEncoder(cnn, modality=modality, output_stride=output_stride)
        self.modality = self.cnn.modality
        if self.modality.channels != 3:
            raise ValueError(f"the tracker reads RGB frames to gray them, got a {self.modality.channels}-channel "
                             f"modality {self.modality.name!r}")
        self.dim, self.gray, self.stride = dim, gray, output_stride
        layers: list[nn.Module] = []
        cin = self.cnn.dim
        for d in dilations:
            layers += [nn.Conv3d(cin, width, (1, 3, 3), padding=(0, d, d), dilation=(1, d, d), bias=False),
                       nn.Conv3d(width, width, (temporal_kernel, 1, 1), padding=(temporal_kernel // 2, 0, 0),
                                 bias=False),
                       nn.BatchNorm3d(width), nn.ReLU(inplace=True)]
            cin = width
        self.stack = nn.Sequential(*layers)
        self.embed_head = nn.Conv3d(cin, dim, 1)

    @property
    def num_prefix(self) -> int:
        return 0

    def embed(self, clips: Tensor) -> Tensor:
        """Normalised RGB clips (B, T, 3, H, W) -> embeddings (B, T, dim, H/s, W/s)."""
        b, t = clips.shape[:2]
        x = clips.flatten(0, 1)  # (B, T, 3, H, W) -> (B*T, 3, H, W)
        if self.gray:
            x = grayscale(x, self.modality)
        fmap = self.cnn.forward_dense(x)  # (B*T, C, h, w)
        # contiguous: the 3-D conv backward rejects a strided gradient
        fmap = fmap.unflatten(0, (b, t)).transpose(1, 2).contiguous()  # (B*T, C, h, w) -> (B, C, T, h, w)
        out = self.embed_head(self.stack(fmap))  # (B, dim, T, h, w)
        return out.transpose(1, 2)  # (B, dim, T, h, w) -> (B, T, dim, h, w)

    def forward_dense(self, x: Tokens | Tensor) -> Tensor:
        """One frame per sample, `Tokens` or normalised (B, 3, H, W) -> embeddings (B, dim, H/s, W/s)."""
        if isinstance(x, Tokens):
            x = x.image()  # (B, 3, H, W)
        return self.embed(x.unsqueeze(1))[:, 0]  # (B, 1, dim, h, w) -> (B, dim, h, w)

    def forward(self, x: Tokens | Tensor) -> Tensor:
        """Same as `forward_dense`: the propagation evaluation calls the module on normalised frames."""
        return self.forward_dense(x)
