"""Patch tokens: the one representation every modality becomes (see DESIGN.md, "Core interfaces")."""

from mmssl.tokens.core import Tokens, gather_tokens, patchify, scatter_tokens, unpatchify, visible_from_mask
from mmssl.tokens.masks import (AllMask, BlockMask, CentreMask, DirichletMask, NoMask, RandomMask, StripeMask,
                                TubeMask, ensure_mask)
from mmssl.tokens.positions import (interpolate_pos_embed, position_table, sincos_1d, sincos_pos_embed,
                                    sinusoid_table)

__all__ = [
    "Tokens", "patchify", "unpatchify", "gather_tokens", "scatter_tokens", "visible_from_mask",
    "RandomMask", "TubeMask", "BlockMask", "CentreMask", "StripeMask", "DirichletMask", "NoMask", "AllMask",
    "ensure_mask", "sincos_1d", "sincos_pos_embed", "sinusoid_table", "interpolate_pos_embed", "position_table",
]
