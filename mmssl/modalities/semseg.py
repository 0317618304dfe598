"""Semantic maps: class ids at stride 4 (56x56 for a 224 image) in 4x4 patches, so 196 tokens (MultiMAE).

133 classes as the COCO-panoptic pseudo-labels MultiMAE trains on; the encoder embeds ids instead of projecting
pixel values.
"""

from mmssl.modalities.spec import Modality

SEMSEG = Modality(name="semseg", patch=(4, 4), size=(56, 56), channels=1, key="semseg.png", num_classes=133)
