"""Depth maps: one channel, 16x16 patches; standardised per sample, as MultiMAE does with its pseudo-labels."""

from mmssl.modalities.spec import Modality

DEPTH = Modality(name="depth", patch=(16, 16), size=(224, 224), channels=1, key="depth.png")
