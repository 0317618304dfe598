"""mmssl: self-supervised learning on images, video and audio, fed by streaming WebDataset shards."""

__version__ = "0.1.0"
