"""TokenEncoder: a timm Vision Transformer trunk that reads `Tokens` of any modality.

The trunk (blocks and final norm) comes from timm by name, so every plain ViT size timm knows is available
without a list here. What timm ties to images, the conv patch embedding and the learned position table of a
fixed size, is replaced: patches are embedded by a linear map sized to the modality's patch volume (or a class
embedding for categorical maps), and fixed positions are made for whatever grid the tokens come on. Only the
visible tokens are run, as MAE's encoder does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import timm
import torch
from torch import Tensor, nn

from mmssl.modalities import Modality, get_modality
from mmssl.models.embed import patch_embed_for
from mmssl.models.init import init_mae_
from mmssl.tokens import Tokens, position_table
from mmssl.tokens.positions import POSITION_TABLES

__all__ = ["Encoded", "TokenEncoder"]


@dataclass(frozen=True)
class Encoded:
    """Encoder output.

    Attributes:
        tokens: features of the visible tokens (B, K, D), in the order of `visible`.
        prefix: features of prefix tokens such as [CLS] (B, n_prefix, D); n_prefix may be 0.
        pooled: one vector per sample (B, D): the [CLS] feature, or the mean token feature without [CLS].
        visible: the indices (B, K) the tokens sit at on the grid, or None when all tokens were visible.
        grid: the token grid.
    """

    tokens: Tensor
    prefix: Tensor
    pooled: Tensor
    visible: Tensor | None
    grid: tuple[int, ...]


class TokenEncoder(nn.Module):
    """A ViT encoder over patch tokens.

    Args:
        name: a timm ViT name (e.g. "vit_tiny_patch16_224", "vit_base_patch16_224"); it sets depth, width and
            heads unless overridden.
        modality: the modality (spec or name) whose tokens this encoder reads; it sizes the patch embedding.
        depth: number of blocks (overrides the named model).
        dim: token width (overrides the named model).
        heads: attention heads (overrides the named model).
        mlp_ratio: MLP width ratio (overrides the named model).
        drop_path: stochastic depth rate.
        cls_token: prepend a learned [CLS] token (MAE: yes; VideoMAE: no).
        pos_embed: fixed position table, "sincos" (per-axis, MAE) or "sinusoid" (flat over all tokens, VideoMAE).
    """

    def __init__(self, name: str = "vit_base_patch16_224", *, modality: str | Modality = "image",
                 depth: int | None = None, dim: int | None = None, heads: int | None = None,
                 mlp_ratio: float | None = None, drop_path: float = 0.0, cls_token: bool = True,
                 pos_embed: str = "sincos") -> None:
        super().__init__()
        self.name = name
        self.modality = get_modality(modality)
        if pos_embed not in POSITION_TABLES:
            raise ValueError(f"unknown pos_embed {pos_embed!r}; choose one of {sorted(POSITION_TABLES)}")
        self.pos_kind = pos_embed
        overrides = {k: v for k, v in dict(depth=depth, embed_dim=dim, num_heads=heads,
                                              mlp_ratio=mlp_ratio).items() if v is not None}
        try:
            vit = timm.create_model(name, pretrained=False, num_classes=0, drop_path_rate=drop_path, **overrides)
        except RuntimeError as err:  # timm raises RuntimeError for unknown names
            raise ValueError(f"unknown encoder {name!r}: {err}; see `mmssl ls`") from None
        if not (hasattr(vit, "blocks") and hasattr(vit, "norm") and hasattr(vit, "embed_dim")):
            raise ValueError(f"encoder {name!r} is not a plain ViT (needs blocks, norm and embed_dim)")
        self.dim = int(vit.embed_dim)
        self.depth = len(vit.blocks)
        self.heads = int(vit.blocks[0].attn.num_heads)
        self.blocks = vit.blocks
        self.norm = vit.norm
        self.patch_embed = patch_embed_for(self.modality, self.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.dim)) if cls_token else None
        self._positions: dict[tuple, Tensor] = {}
        init_mae_(self)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    @property
    def num_prefix(self) -> int:
        return 0 if self.cls_token is None else 1

    def positions(self, grid: tuple[int, ...], like: Tensor) -> Tensor:
        """The fixed (N, D) position table for `grid`, cached per grid, device and dtype."""
        key = (tuple(grid), like.device, like.dtype)
        if key not in self._positions:
            self._positions[key] = position_table(self.pos_kind, grid, self.dim).to(like.device, like.dtype)
        return self._positions[key]

    def embed(self, tokens: Tokens) -> Tensor:
        """Embeds the visible patches and adds their positions: (B, K, D)."""
        if tokens.modality != self.modality.name:
            raise ValueError(f"encoder built for {self.modality.name!r} tokens got {tokens.modality!r} tokens")
        x = self.patch_embed(tokens.visible_patches())  # (B, K, D)
        pos = self.positions(tokens.grid, x)  # (N, D)
        return x + (pos if tokens.visible is None else pos[tokens.visible])  # (B, K, D)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Runs the trunk on already embedded tokens (B, K, D); returns (prefix, tokens) features after the norm.

        Methods that assemble their own token sequence (several modalities, extra tokens) call this directly.
        """
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)  # (B, 1+K, D)
        x = self.norm(self.blocks(x))
        return x[:, :self.num_prefix], x[:, self.num_prefix:]

    def forward(self, tokens: Tokens) -> Encoded:
        """Encodes the visible tokens of a batch."""
        prefix, feats = self.encode(self.embed(tokens))
        pooled = prefix[:, 0] if self.num_prefix else feats.mean(1)
        return Encoded(tokens=feats, prefix=prefix, pooled=pooled, visible=tokens.visible, grid=tokens.grid)

    def forward_dense(self, tokens: Tokens) -> Tensor:
        """Features of every token laid out on the grid: (B, D, *grid), for dense evaluation."""
        if tokens.num_visible != tokens.num_tokens:
            raise ValueError("forward_dense needs every token visible; drop the mask first")
        feats = self(replace(tokens, visible=None)).tokens  # (B, N, D) in grid order
        b, _, d = feats.shape
        return feats.transpose(1, 2).reshape(b, d, *tokens.grid)  # (B, D, *grid)
