"""Video clips: 16 frames of 224x224 cut into 2x16x16 tubelets, 8x14x14 = 1568 tokens (VideoMAE)."""

from mmssl.modalities.image import IMAGENET_MEAN, IMAGENET_STD
from mmssl.modalities.spec import Modality

VIDEO = Modality(name="video", patch=(2, 16, 16), size=(16, 224, 224), channels=3, key="mp4",
                 mean=IMAGENET_MEAN, std=IMAGENET_STD)
