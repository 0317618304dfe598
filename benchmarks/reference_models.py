"""Baselines with the reference code's structure, for `benchmarks/train_step.py`.

Written here (not copied) after facebookresearch/mae `models_mae.py` and MCG-NJU/VideoMAE `modeling_pretrain.py`:
- `ReferenceMAE`: conv patch embedding over the whole image, learnable-shaped but frozen position tables with a
  [CLS] slot, per-sample `argsort(noise)` shuffle/unshuffle, timm `Block`s in encoder and decoder, the decoder
  predicts every token, norm-pix MSE over hidden patches;
- `ReferenceVideoMAE`: Conv3d tubelet embedding, flat sinusoid tables, visible tokens picked with a boolean mask
  (`x[~mask].reshape(B, -1, C)`, a host sync, as the reference does), mask tokens appended after the visible ones,
  the head runs on the hidden tokens only; `labels` builds the per-tubelet, per-channel normalised target the
  way the reference engine does, under no_grad, outside autocast.
Both use timm `Block`s (the reference pins timm 0.3.2, whose attention is the explicit softmax(q k^T) v; with
`sdpa=False` timm's own fused attention is switched off to match it). VideoMAE's own block differs from timm's only
in having no key bias; mmssl's encoder has one, so the timm block keeps ours' weights exactly.

Weights are not initialised here: `load_from_ours` copies a mmssl `MAE` / `VideoMAE` into the baseline (a
state-dict mapping), so both compute the same function and their losses can be compared on one batch.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

__all__ = ["ReferenceMAE", "ReferenceVideoMAE", "load_from_ours", "use_sdpa"]


def _blocks(dim: int, depth: int, heads: int, mlp_ratio: float) -> nn.ModuleList:
    norm = partial(nn.LayerNorm, eps=1e-6)
    return nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth))


def use_sdpa(model: nn.Module, enabled: bool) -> None:
    """Switches timm's fused (SDPA) attention on or off in every timm attention module of `model`."""
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = enabled


class ReferenceMAE(nn.Module):
    """MAE with the layout of `models_mae.MaskedAutoencoderViT` (images in, loss out)."""

    def __init__(self, *, image: int, patch: int, dim: int, depth: int, heads: int, decoder_dim: int,
                 decoder_depth: int, decoder_heads: int, mask_ratio: float = 0.75, mlp_ratio: float = 4.0,
                 norm_pix_loss: bool = True, sdpa: bool = False) -> None:
        super().__init__()
        self.patch, self.mask_ratio, self.norm_pix_loss = patch, mask_ratio, norm_pix_loss
        n = (image // patch) ** 2
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, dim), requires_grad=False)
        self.blocks = _blocks(dim, depth, heads, mlp_ratio)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 1, decoder_dim), requires_grad=False)
        self.decoder_blocks = _blocks(decoder_dim, decoder_depth, decoder_heads, mlp_ratio)
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, patch * patch * 3)
        use_sdpa(self, sdpa)

    def patchify(self, imgs: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, N, p*p*3), patch rows then columns, channel last."""
        b, c, h, w = imgs.shape
        p = self.patch
        x = imgs.reshape(b, c, h // p, p, w // p, p)  # (B, C, h, p, w, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)  # (B, N, p*p*C)

    def random_masking(self, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Keeps the tokens of lowest noise: x (B, N, D) -> kept (B, K, D), mask (B, N) 1 = hidden, ids_restore."""
        b, n, d = x.shape
        keep = int(n * (1 - self.mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        kept = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).repeat(1, 1, d))
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        return kept, torch.gather(mask, 1, ids_restore), ids_restore

    def forward_encoder(self, imgs: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.patch_embed.proj(imgs).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, N, D)
        x = x + self.pos_embed[:, 1:]
        x, mask, ids_restore = self.random_masking(x, noise)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # (B, 1+K, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: Tensor, ids_restore: Tensor) -> Tensor:
        x = self.decoder_embed(x)  # (B, 1+K, Dd)
        b, n = ids_restore.shape
        mask_tokens = self.mask_token.repeat(b, n + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)  # (B, N, Dd) in shuffled order
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed  # (B, 1+N, Dd)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # (B, N, p*p*3), [CLS] dropped

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)  # (B, N)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: Tensor, noise: Tensor) -> Tensor:
        latent, mask, ids_restore = self.forward_encoder(imgs, noise)
        return self.forward_loss(imgs, self.forward_decoder(latent, ids_restore), mask)


class ReferenceVideoMAE(nn.Module):
    """VideoMAE with the layout of `modeling_pretrain.PretrainVisionTransformer` (clips + mask in, hidden-token
    predictions out)."""

    def __init__(self, *, frames: int, image: int, tubelet: tuple[int, int, int], dim: int, depth: int,
                 heads: int, decoder_dim: int, decoder_depth: int, decoder_heads: int, mlp_ratio: float = 4.0,
                 sdpa: bool = False) -> None:
        super().__init__()
        self.tubelet = tubelet
        n = (frames // tubelet[0]) * (image // tubelet[1]) * (image // tubelet[2])
        self.encoder = nn.Module()
        self.encoder.patch_embed = nn.Module()
        self.encoder.patch_embed.proj = nn.Conv3d(3, dim, tubelet, stride=tubelet)
        self.encoder.blocks = _blocks(dim, depth, heads, mlp_ratio)
        self.encoder.norm = nn.LayerNorm(dim, eps=1e-6)
        self.encoder_to_decoder = nn.Linear(dim, decoder_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder = nn.Module()
        self.decoder.blocks = _blocks(decoder_dim, decoder_depth, decoder_heads, mlp_ratio)
        self.decoder.norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder.head = nn.Linear(decoder_dim, tubelet[0] * tubelet[1] * tubelet[2] * 3)
        # fixed tables, not parameters (the reference keeps them as plain tensors); set by `load_from_ours`
        self.register_buffer("encoder_pos", torch.zeros(1, n, dim), persistent=False)
        self.register_buffer("decoder_pos", torch.zeros(1, n, decoder_dim), persistent=False)
        use_sdpa(self, sdpa)

    def forward(self, videos: Tensor, mask: Tensor) -> Tensor:
        """videos (B, 3, T, H, W) normalised, mask (B, N) True = hidden -> predictions (B, N_hidden, t*p*p*3)."""
        x = self.encoder.patch_embed.proj(videos).flatten(2).transpose(1, 2)  # (B, D, t, h, w) -> (B, N, D)
        x = x + self.encoder_pos.type_as(x).detach()
        b, _, c = x.shape
        x = x[~mask].reshape(b, -1, c)  # (B, K, D): boolean indexing, a host sync in the reference
        for block in self.encoder.blocks:
            x = block(x)
        x = self.encoder_to_decoder(self.encoder.norm(x))  # (B, K, Dd)
        pos = self.decoder_pos.expand(b, -1, -1).type_as(x).detach()
        cd = pos.shape[-1]
        pos_vis, pos_mask = pos[~mask].reshape(b, -1, cd), pos[mask].reshape(b, -1, cd)  # (B, K, Dd), (B, N-K, Dd)
        x = torch.cat([x + pos_vis, self.mask_token + pos_mask], dim=1)  # (B, N, Dd): visible, then hidden
        for block in self.decoder.blocks:
            x = block(x)
        return self.decoder.head(self.decoder.norm(x[:, -pos_mask.shape[1]:]))

    @torch.no_grad()
    def labels(self, videos: Tensor, mask: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """The reference engine's target: un-normalise, cut tubelets, standardise each per channel, keep hidden."""
        x = videos * std.reshape(1, 3, 1, 1, 1) + mean.reshape(1, 3, 1, 1, 1)  # back to [0, 1]
        b, c, t, h, w = x.shape
        p0, p1, p2 = self.tubelet
        x = x.reshape(b, c, t // p0, p0, h // p1, p1, w // p2, p2)  # (B, C, t, p0, h, p1, w, p2)
        x = x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, -1, p0 * p1 * p2, c)  # (B, N, p0*p1*p2, C)
        x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
        x = x.reshape(b, x.shape[1], -1)  # (B, N, p0*p1*p2*C)
        return x[mask].reshape(b, -1, x.shape[-1])  # (B, N_hidden, V*C)


def _linear_to_conv(weight: Tensor, kernel: tuple[int, ...]) -> Tensor:
    """A linear patch embedding over channel-last patch vectors (D, prod(kernel)*C) as a conv weight (D, C, *k)."""
    d = weight.shape[0]
    w = weight.reshape(d, *kernel, -1)  # (D, *kernel, C)
    return w.permute(0, w.dim() - 1, *range(1, w.dim() - 1)).contiguous()  # (D, C, *kernel)


def _block_state(ours: dict[str, Tensor], src: str, dst: str, out: dict[str, Tensor]) -> None:
    """Copies the blocks under `src` into timm blocks under `dst`; mmssl's decoder q + kv become one qkv."""
    for name, value in ours.items():
        if not name.startswith(src):
            continue
        rest = name[len(src):]  # "{i}.attn.q.weight" ...
        index, _, leaf = rest.partition(".")
        if leaf.startswith("attn.q."):
            kind = leaf.rsplit(".", 1)[1]
            kv = ours[f"{src}{index}.attn.kv.{kind}"]
            out[f"{dst}{index}.attn.qkv.{kind}"] = torch.cat([value, kv])  # q rows, then k, then v
        elif not leaf.startswith("attn.kv."):
            out[f"{dst}{index}.{leaf}"] = value


def _copy(ours: dict[str, Tensor], src: str, out: dict[str, Tensor], dst: str) -> None:
    """Weight and bias of one layer under a new name."""
    for kind in ("weight", "bias"):
        out[f"{dst}.{kind}"] = ours[f"{src}.{kind}"]


@torch.no_grad()
def load_from_ours(ref: ReferenceMAE | ReferenceVideoMAE, ours: nn.Module, grid: tuple[int, ...]) -> None:
    """Copies a mmssl MAE / VideoMAE into the baseline, so both compute the same function.

    Args:
        ref: the baseline.
        ours: `mmssl.methods.MAE` or `VideoMAE` with the same sizes.
        grid: the token grid, for the fixed position tables.
    """
    sd = {k: v.detach() for k, v in ours.state_dict().items()}
    like = sd["encoder.patch_embed.proj.weight"]
    enc_pos = ours.encoder.positions(grid, like)  # (N, D)
    dec_pos = ours.decoder.queries.positions(grid, like)  # (N, Dd)
    out: dict[str, Tensor] = {}
    if isinstance(ref, ReferenceMAE):
        kernel = (ref.patch, ref.patch)
        out["patch_embed.proj.weight"] = _linear_to_conv(sd["encoder.patch_embed.proj.weight"], kernel)
        out["patch_embed.proj.bias"] = sd["encoder.patch_embed.proj.bias"]
        out["cls_token"] = sd["encoder.cls_token"]
        out["pos_embed"] = torch.cat([torch.zeros_like(enc_pos[:1]), enc_pos])[None]  # [CLS] slot at 0
        _block_state(sd, "encoder.blocks.", "blocks.", out)
        out["norm.weight"], out["norm.bias"] = sd["encoder.norm.weight"], sd["encoder.norm.bias"]
        out["decoder_embed.weight"] = sd["decoder.queries.proj.weight"]
        out["decoder_embed.bias"] = sd["decoder.queries.proj.bias"]
        out["mask_token"] = sd["decoder.queries.mask_token"]
        out["decoder_pos_embed"] = torch.cat([torch.zeros_like(dec_pos[:1]), dec_pos])[None]
        _block_state(sd, "decoder.blocks.", "decoder_blocks.", out)
        _copy(sd, "decoder.head.norm", out, "decoder_norm")
        _copy(sd, "decoder.head.pred", out, "decoder_pred")
    else:
        out["encoder.patch_embed.proj.weight"] = _linear_to_conv(sd["encoder.patch_embed.proj.weight"], ref.tubelet)
        out["encoder.patch_embed.proj.bias"] = sd["encoder.patch_embed.proj.bias"]
        _block_state(sd, "encoder.blocks.", "encoder.blocks.", out)
        out["encoder.norm.weight"], out["encoder.norm.bias"] = sd["encoder.norm.weight"], sd["encoder.norm.bias"]
        out["encoder_to_decoder.weight"] = sd["decoder.queries.proj.weight"]
        out["mask_token"] = sd["decoder.queries.mask_token"]
        _block_state(sd, "decoder.blocks.", "decoder.blocks.", out)
        _copy(sd, "decoder.head.norm", out, "decoder.norm")
        _copy(sd, "decoder.head.pred", out, "decoder.head")
        ref.encoder_pos.copy_(enc_pos[None])
        ref.decoder_pos.copy_(dec_pos[None])
    ref.load_state_dict(out, strict=True)
