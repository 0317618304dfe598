"""RGB images: 224x224 input, 16x16 patches (ViT-B/16, MAE), ImageNet statistics."""

from mmssl.modalities.spec import Modality

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE = Modality(name="image", patch=(16, 16), size=(224, 224), channels=3, key="jpg",
                 mean=IMAGENET_MEAN, std=IMAGENET_STD)
