"""Encoders and decoders over patch tokens."""

from mmssl.models.decoders import CrossAttentionDecoder, MaskedQueries, SelfAttentionDecoder, WindowDecoder
from mmssl.models.embed import ClassPatchEmbed, LinearPatchEmbed
from mmssl.models.encoder import Encoded, TokenEncoder

__all__ = [
    "TokenEncoder", "Encoded", "LinearPatchEmbed", "ClassPatchEmbed",
    "MaskedQueries", "SelfAttentionDecoder", "CrossAttentionDecoder", "WindowDecoder",
]
