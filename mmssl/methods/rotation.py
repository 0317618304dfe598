"""RotNet: Gidaris et al., "Unsupervised Representation Learning by Predicting Image Rotations", ICLR 2018.

Rotate each image and classify by how much. Follows gidariss/FeatureLearningRotNet (`dataloader.py`,
`config/ImageNet_RotNet_AlexNet.py`) and REFERENCE.md §1.7:
- all R rotated copies of every image go into the same mini-batch, next to each other, labelled 0..R-1 (the paper
  found this better than one random rotation per image);
- R = 4 (0°, 90°, 180°, 270°) by default; the paper's ablation also trains R = 2 (0°, 180°) and R = 8 (multiples of
  45°, which need resampling and leave empty corners);
- the classifier reads the encoder's pooled feature ([CLS] or the mean token for a ViT, the global average of the
  last feature map for a CNN), linear by default or an MLP (RotNet's NIN and AlexNet heads had hidden layers).
The rotations are made on the whole-image batch the device stage left in `batch["image"]` (`mmssl.pretext`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.methods.output import Output
from mmssl.models.heads import MLPHead
from mmssl.pretext import all_rotations

__all__ = ["Rotation"]


class Rotation(nn.Module):
    """Rotation prediction with every rotation of each image in the batch.

    Args:
        encoder: a `TokenEncoder` or `CNNEncoder` (anything with `modality`, `dim` and a `pooled` output).
        rotations: 4 (RotNet), or 2 / 8 for the paper's ablation.
        hidden_dim: hidden width of an MLP classifier; None for a linear one.
        layers: linear maps of the MLP classifier when `hidden_dim` is set.
    """

    modalities = ("image",)

    def __init__(self, encoder: nn.Module, *, rotations: int = 4, hidden_dim: int | None = None,
                 layers: int = 2) -> None:
        super().__init__()
        if rotations not in (2, 4, 8):
            raise ValueError(f"rotations must be 2, 4 or 8 (the RotNet ablation), got {rotations}")
        self.encoder = encoder
        self.modality = encoder.modality
        self.rotations = rotations
        self.head = (nn.Linear(encoder.dim, rotations) if hidden_dim is None
                     else MLPHead(encoder.dim, rotations, hidden_dim=hidden_dim, layers=layers))

    def logits(self, images: Tensor) -> Tensor:
        """Rotation logits (N, R) of dense images (N, C, H, W)."""
        return self.head(self.encoder(self.modality.tokenize(images)).pooled)

    def forward(self, batch: dict) -> Output:
        tokens = batch[self.modality.name]
        images, labels = all_rotations(tokens.image().float(), rotations=self.rotations)  # (B*R, C, H, W), (B*R,)
        logits = self.logits(images)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return Output(loss=loss, logs={"loss": loss.detach(), "rotation_acc": acc})
