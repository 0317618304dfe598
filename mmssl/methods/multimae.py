"""MultiMAE: Bachmann et al., "MultiMAE: Multi-modal Multi-task Masked Autoencoders", ECCV 2022.

One ViT encodes a small visible subset of the tokens of several modalities (RGB, depth, semantic maps) and one
decoder per modality predicts that modality's hidden tokens. Follows EPFL-VILAB/MultiMAE (`multimae/multimae.py`,
`multimae/output_adapters.py`, `multimae/criterion.py`, `cfgs/pretrain/multimae-b_98_rgb+-depth-semseg_1600e.yaml`):
- input adapters: a linear patch projection per modality (semantic maps: a 64-d class embedding at stride 4 with
  4x4 patches), each adding fixed 2-D sin-cos positions; the RGB adapter is the encoder's own patch embedding, so
  the trained encoder alone reads RGB images;
- masking: the visible budget (98 tokens, 1/6 of 3 x 196) is split across modalities with Dirichlet(1) shares,
  tokens within a modality are random, and the rounding is fixed so exactly 98 stay visible (`DirichletMask`);
- one learned global token (the encoder's [CLS]) joins the visible tokens;
- one output adapter per modality (width 256, 8 heads): the encoder tokens are projected, mask tokens fill the
  hidden cells, and every token gets its cell's sin-cos position plus a learned embedding of the modality it came
  from; the queries are the decoder's own modality's tokens, the context the visible tokens plus the global token;
  one cross-attention layer with an MLP, then 2 self-attention blocks and a linear head;
- losses: masked MSE on RGB, masked L1 on depth, masked cross-entropy on semantic classes, each averaged over the
  hidden cells of a sample, then over the samples that have any (`nanmean`), and summed over modalities.
Token form: the semantic-map decoder predicts the 4x4 class ids of each stride-4 patch, as MultiMAE's stride-4
output adapter does.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.figures import Row, save_reconstruction
from mmssl.losses import from_norm_pix, norm_pix_target
from mmssl.methods.output import Output
from mmssl.modalities import Modality, get_modality
from mmssl.models import CrossAttentionDecoder, TokenEncoder
from mmssl.models.embed import patch_embed_for
from mmssl.tokens import DirichletMask, Tokens, gather_tokens, scatter_tokens, visible_from_mask

__all__ = ["MultiMAE", "per_sample_masked_mean"]


def per_sample_masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of (B, N) values over each sample's hidden tokens, then over samples that have any (MultiMAE).

    A sample with no hidden token of a modality (the Dirichlet split can leave one fully visible) is skipped.
    """
    mask = mask.to(values.dtype)
    counts = mask.sum(dim=1)
    if not bool((counts > 0).any()):
        return values.sum() * 0.0  # nothing hidden anywhere: a zero that keeps the graph
    per_sample = (values * mask).sum(dim=1) / counts  # (B,), NaN where a sample has nothing hidden
    return per_sample.nanmean()


class MultiMAE(nn.Module):
    """Multi-modal masked autoencoder.

    Args:
        encoder: a `TokenEncoder` with [CLS] (the global token); its modality (RGB) uses its own patch embedding.
        domains: the modalities read and predicted, as names or specs (a spec overrides the named default).
        num_encoded: visible tokens per sample, over all modalities together (98 = 1/6 of 588).
        alpha: Dirichlet concentration of the split across modalities (1: uniform over the simplex).
        decoder_dim: width of each output adapter (256).
        decoder_depth: self-attention blocks after the cross-attention layer (2).
        decoder_heads: decoder heads (8).
        l1: domains trained with L1 instead of MSE (depth); categorical domains use cross-entropy.
        norm_pix_loss: per-patch standardised targets for the continuous domains not in `l1`.
    """

    modalities = ("image", "depth", "semseg")

    def __init__(self, encoder: TokenEncoder, *, domains: Sequence[str | Modality] = ("image", "depth", "semseg"),
                 num_encoded: int = 98, alpha: float = 1.0, decoder_dim: int = 256, decoder_depth: int = 2,
                 decoder_heads: int = 8, l1: Sequence[str] = ("depth",), norm_pix_loss: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        specs = [encoder.modality if get_modality(d).name == encoder.modality.name else get_modality(d)
                 for d in domains]
        if len({s.name for s in specs}) != len(specs):
            raise ValueError(f"MultiMAE domains must be distinct, got {[s.name for s in specs]}")
        self.specs = {s.name: s for s in specs}
        self.names = list(self.specs)
        self.l1 = tuple(l1)
        self.norm_pix_loss = norm_pix_loss
        self.masking = DirichletMask(visible=num_encoded, alpha=alpha)
        self.adapters = nn.ModuleDict({s.name: patch_embed_for(s, encoder.dim) for s in specs
                                       if s.name != encoder.modality.name})
        self.decoders = nn.ModuleDict({
            s.name: CrossAttentionDecoder(encoder.dim, self._out_dim(s), dim=decoder_dim, depth=1,
                                          heads=decoder_heads, self_attention=False, self_depth=decoder_depth)
            for s in specs})
        # per output adapter, one learned embedding of each input modality (MultiMAE's `task_embeddings`)
        self.task_embed = nn.ParameterDict({
            s.name: nn.Parameter(torch.zeros(len(specs), decoder_dim)) for s in specs})
        for p in self.task_embed.values():
            nn.init.trunc_normal_(p, std=0.02)

    @staticmethod
    def _out_dim(spec: Modality) -> int:
        """Values predicted per token: raw patch values, or class logits for every cell of a class-map patch."""
        if spec.categorical:
            return spec.patch_dim // spec.channels * spec.num_classes
        return spec.patch_dim

    def _embed(self, name: str, tokens: Tokens) -> Tensor:
        """All tokens of one modality embedded with their positions: (B, N, D)."""
        full = replace(tokens, visible=None)
        if name == self.encoder.modality.name:
            return self.encoder.embed(full)
        x = self.adapters[name](full.patches)  # (B, N, D)
        return x + self.encoder.positions(full.grid, x)

    def masks(self, batch: dict) -> list[Tensor]:
        """Per-modality hidden masks (B, N_m): the pipeline's, or a Dirichlet split of the visible budget."""
        tokens = [batch[n] for n in self.names]
        if all(t.visible is not None for t in tokens):
            return [t.mask for t in tokens]
        sizes = [t.num_tokens for t in tokens]
        mask = self.masking(tokens[0].batch_size, sizes, device=tokens[0].patches.device)
        return DirichletMask.split(mask, sizes)

    def predict(self, batch: dict, masks: list[Tensor]) -> dict[str, Tensor]:
        """Encodes the visible tokens of all modalities and predicts every cell of each: {name: (B, N_m, out)}."""
        tokens = [batch[n] for n in self.names]
        sizes = [t.num_tokens for t in tokens]
        total = sum(sizes)
        hidden = torch.cat(masks, dim=1)  # (B, N_total), modalities concatenated in `names` order
        # the same K in every row, though split differently; known without reading the mask back from a GPU
        count = (sum(t.num_visible for t in tokens) if all(t.visible is not None for t in tokens)
                 else self.masking.visible)
        visible = visible_from_mask(hidden, count)  # (B, K)
        emb = torch.cat([self._embed(n, t) for n, t in zip(self.names, tokens)], dim=1)  # (B, N_total, D)
        prefix, feats = self.encoder.encode(gather_tokens(emb, visible))  # (B, 1, D), (B, K, D)
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        out = {}
        for name in self.names:
            dec = self.decoders[name]
            proj = dec.queries.proj(feats)  # (B, K, dim)
            full = scatter_tokens(proj, visible, total, dec.queries.mask_token)  # (B, N_total, dim)
            embeds = torch.cat([dec.queries.positions(t.grid, full) + self.task_embed[name][j]
                                for j, t in enumerate(tokens)])  # (N_total, dim): position + source modality
            full = full + embeds
            i = self.names.index(name)
            queries = full[:, offsets[i]:offsets[i] + sizes[i]]  # (B, N_m, dim): this modality's cells
            # the global token joins the context without a position or modality embedding, as in MultiMAE
            context = torch.cat([gather_tokens(full, visible), dec.queries.proj(prefix)], dim=1)  # (B, K+1, dim)
            out[name] = dec.decode(queries, context)
        return out

    def _target(self, name: str, tokens: Tokens) -> Tensor:
        spec = self.specs[name]
        if spec.categorical:
            return tokens.patches.long()  # (B, N, V) class ids
        if self.norm_pix_loss and name not in self.l1:
            return norm_pix_target(tokens.patches)
        return tokens.patches.float()

    def _token_losses(self, name: str, pred: Tensor, target: Tensor) -> Tensor:
        """Per-token loss (B, N): cross-entropy over cells, L1 or squared error over values."""
        spec = self.specs[name]
        if spec.categorical:
            b, n, v = target.shape
            logits = pred.float().reshape(b * n * v, spec.num_classes)  # (B*N*V, classes), cell-major per patch
            ce = F.cross_entropy(logits, target.reshape(-1), reduction="none")
            return ce.reshape(b, n, v).mean(-1)  # (B, N)
        if name in self.l1:
            return (pred.float() - target).abs().mean(-1)
        return (pred.float() - target).pow(2).mean(-1)

    def forward(self, batch: dict) -> Output:
        masks = self.masks(batch)
        preds = self.predict(batch, masks)
        logs, loss = {}, 0.0
        for name, mask in zip(self.names, masks):
            per_token = self._token_losses(name, preds[name], self._target(name, batch[name]))
            task_loss = per_sample_masked_mean(per_token, mask)
            logs[f"loss_{name}"] = task_loss.detach()
            loss = loss + task_loss
        logs["loss"] = loss.detach()
        return Output(loss=loss, logs=logs)

    @torch.no_grad()
    def figure(self, batch: dict, path: str | Path, *, samples: int = 2) -> Path:
        """Writes a reconstruction PNG with one row per modality for each of the first `samples` samples."""
        masks = self.masks(batch)
        preds = self.predict(batch, masks)
        rows = []
        for i in range(min(samples, batch[self.names[0]].batch_size)):
            for name, mask in zip(self.names, masks):
                tokens, spec, pred = batch[name], self.specs[name], preds[name][i]
                target = None
                if spec.categorical:
                    pred = pred.reshape(tokens.num_tokens, -1, spec.num_classes).argmax(-1)  # (N, V) class ids
                elif self.norm_pix_loss and name not in self.l1:
                    target = norm_pix_target(tokens.patches[i])
                    pred = from_norm_pix(pred, tokens.patches[i])
                rows.append(Row(modality=spec, grid=tokens.grid, patch=tokens.patch, input=tokens.patches[i].cpu(),
                                mask=mask[i].cpu(), prediction=pred.cpu(),
                                target=None if target is None else target.cpu()))
        return save_reconstruction(rows, path)
