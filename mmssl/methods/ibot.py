"""iBOT: Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer", ICLR 2022.

DINO plus masked image modeling whose targets come from the EMA teacher (the "online tokenizer"). Follows
bytedance/ibot `main_ibot.py` (`iBOTLoss`), `loader.py` (`ImageFolderMask`) and `models/vision_transformer.py`:
- the student sees the global views with BEiT-style block masks: a masked cell's patch embedding is replaced by
  a learned mask token (zeros at init) before positions are added; the teacher sees the same views unmasked;
  local views are never masked and only give [CLS] outputs;
- per image and view a prediction ratio is drawn from `mask_ratios` with a spread of `mask_ratio_var`
  (`--pred_ratio 0 0.3 --pred_ratio_var 0 0.2`: half of the images unmasked, the others U(0.1, 0.5)); blocks
  have aspect ratios in [0.3, 1/0.3] and areas of at least (min(h, w) // 3)^2 cells (`BlockMask`);
- [CLS] loss: DINO's cross-view loss (teacher global q, student view v != q), with centre `c` and temperature;
- patch loss, for the same view only (v == q): at every masked cell, -sum_k P_t,k log P_s,k between the teacher's
  patch distribution (own centre `c2`, own temperature 0.04 -> 0.07) and the student's; averaged over the masked
  cells of each image (an image with none adds 0), then over images and views;
- loss = lambda1 * [CLS] loss + lambda2 * patch loss (both 1); c2 is the EMA of the batch mean over images of the
  teacher's mean patch logits;
- `shared_head` (iBOT's ViT-B setting) uses one head for [CLS] and patch tokens, in the student and the teacher.
The DINOv2 options are DINO's: `centering="sinkhorn"` (on the [CLS] targets and on the masked teacher patches),
`koleo_weight`, and untied heads (`shared_head=False`, DINOv2's `ibot_separate_head`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.methods.dino import (TeacherCentering, add_koleo, advance_teacher_, collapse_logs, frozen_copy,
                                multicrop_cross_entropy, warmup_value)
from mmssl.methods.output import Output
from mmssl.methods.views import concat_views, encode_views
from mmssl.models import TokenEncoder
from mmssl.models.dino_head import DINOHead
from mmssl.tokens import BlockMask, Tokens

__all__ = ["IBOT", "masked_patch_cross_entropy"]


def masked_patch_cross_entropy(teacher_probs: Tensor, student_logits: Tensor, mask: Tensor, *,
                               student_temp: float) -> Tensor:
    """iBOT's patch loss for one set of views.

    Args:
        teacher_probs: targets (M, K) at the masked cells, in the row-major order of `mask`.
        student_logits: student logits (M, K) at the same cells.
        mask: (B, N), True at the M masked cells.
        student_temp: student temperature.

    Returns:
        the mean over images of each image's mean cross-entropy over its masked cells (0 for an unmasked image).
    """
    ce = -(teacher_probs * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(-1)  # (M,)
    per_cell = torch.zeros(mask.shape, dtype=ce.dtype, device=ce.device).masked_scatter(mask, ce)  # (B, N)
    return (per_cell.sum(1) / mask.sum(1).clamp(min=1)).mean()


class IBOT(nn.Module):
    """DINO on [CLS] plus masked patch-token self-distillation on the global views.

    Args:
        encoder: a `TokenEncoder` with a [CLS] token.
        out_dim: [CLS] prototypes (iBOT: 8192).
        patch_out_dim: patch prototypes (8192); with `shared_head` it must equal `out_dim`.
        shared_head: one head for [CLS] and patches (iBOT ViT-B: True); False unties them (DINOv2).
        hidden_dim: head MLP width (2048).
        bottleneck_dim: head bottleneck width (256).
        head_layers: head MLP layers (3).
        norm_last_layer: fix the prototype norms.
        global_views: leading views that are global (masked for the student, seen by the teacher) (2).
        student_temp: student temperature (0.1).
        teacher_temp: [CLS] teacher temperature after warmup (iBOT ViT-B: 0.07).
        warmup_teacher_temp: [CLS] teacher temperature at the start (0.04).
        teacher_patch_temp: patch teacher temperature after warmup (0.07).
        warmup_teacher_patch_temp: patch teacher temperature at the start (0.04).
        teacher_temp_warmup: share of training over which both temperatures rise (iBOT: 30 or 50 epochs).
        center_momentum: EMA momentum of both centres (0.9).
        momentum: base teacher EMA momentum, cosine-increased to 1 (0.996).
        freeze_last_layer: share of training during which the prototype layers are not trained (1 epoch).
        mask_ratios: prediction ratios to choose from per image and view (0, 0.3).
        mask_ratio_var: half-width of the uniform spread around each ratio (0, 0.2).
        mask_aspect: largest block aspect ratio (1 / 0.3).
        cls_weight: lambda1 (1).
        patch_weight: lambda2 (1).
        centering: "center", "sinkhorn" (DINOv2) or "none", for both [CLS] and patch targets.
        sinkhorn_iterations: Sinkhorn-Knopp iterations (3).
        koleo_weight: KoLeo on the global views' student [CLS] (DINOv2: 0.1; 0 is off).
    """

    modalities = ("image", "video", "audio")

    def __init__(self, encoder: TokenEncoder, *, out_dim: int = 8192, patch_out_dim: int = 8192,
                 shared_head: bool = True, hidden_dim: int = 2048, bottleneck_dim: int = 256, head_layers: int = 3,
                 norm_last_layer: bool = True, global_views: int = 2, student_temp: float = 0.1,
                 teacher_temp: float = 0.07, warmup_teacher_temp: float = 0.04, teacher_patch_temp: float = 0.07,
                 warmup_teacher_patch_temp: float = 0.04, teacher_temp_warmup: float = 0.1,
                 center_momentum: float = 0.9, momentum: float = 0.996, freeze_last_layer: float = 0.01,
                 mask_ratios: Sequence[float] = (0.0, 0.3), mask_ratio_var: Sequence[float] = (0.0, 0.2),
                 mask_aspect: float = 1 / 0.3, cls_weight: float = 1.0, patch_weight: float = 1.0,
                 centering: str = "center", sinkhorn_iterations: int = 3, koleo_weight: float = 0.0) -> None:
        super().__init__()
        if shared_head and patch_out_dim != out_dim:
            raise ValueError(f"a shared head has one output size: patch_out_dim {patch_out_dim} != out_dim {out_dim}")
        if len(mask_ratios) != len(mask_ratio_var) or any(v > r for r, v in zip(mask_ratios, mask_ratio_var)):
            raise ValueError(f"mask_ratio_var {list(mask_ratio_var)} must pair with mask_ratios {list(mask_ratios)} "
                             f"and not exceed them")
        self.encoder = encoder
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.dim))

        def head(k: int) -> DINOHead:
            return DINOHead(encoder.dim, k, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim,
                            layers=head_layers, norm_last_layer=norm_last_layer)

        self.head = head(out_dim)
        self.patch_head = None if shared_head else head(patch_out_dim)
        self.teacher = frozen_copy(encoder)
        self.teacher_head = frozen_copy(self.head)
        self.teacher_patch_head = None if shared_head else frozen_copy(self.patch_head)
        self.centering = TeacherCentering(out_dim, mode=centering, momentum=center_momentum,
                                          iterations=sinkhorn_iterations)
        self.patch_centering = TeacherCentering(patch_out_dim, mode=centering, momentum=center_momentum,
                                                iterations=sinkhorn_iterations)
        self.global_views, self.student_temp = global_views, student_temp
        self.temps = dict(cls=(warmup_teacher_temp, teacher_temp), patch=(warmup_teacher_patch_temp,
                                                                          teacher_patch_temp))
        self.teacher_temp_warmup, self.momentum, self.freeze_last_layer = teacher_temp_warmup, momentum, \
            freeze_last_layer
        self.mask_ratios, self.mask_ratio_var, self.mask_aspect = list(mask_ratios), list(mask_ratio_var), mask_aspect
        self.cls_weight, self.patch_weight, self.koleo_weight = cls_weight, patch_weight, koleo_weight
        self.register_buffer("progress", torch.zeros(()))  # training progress, saved with the model

    def train(self, mode: bool = True) -> "IBOT":
        super().train(mode)
        for m in (self.teacher, self.teacher_head, self.teacher_patch_head):
            if m is not None:
                m.eval()
        return self

    def temperature(self, which: str = "cls") -> Tensor:
        """The [CLS] or patch teacher temperature at the current progress."""
        start, end = self.temps[which]
        return warmup_value(self.progress, start=start, end=end, share=self.teacher_temp_warmup)

    def sample_masks(self, batch: int, grid: tuple[int, ...], device: torch.device) -> Tensor:
        """Block masks (B, N), one prediction ratio drawn per image as iBOT's `ImageFolderMask` does."""
        h, w = grid[-2], grid[-1]
        min_cells = max(1, (min(h, w) // 3) ** 2)
        choice = torch.randint(len(self.mask_ratios), (batch,)).tolist()
        spread = (2 * torch.rand(batch) - 1).tolist()
        rows = []
        for i, u in zip(choice, spread):
            ratio = self.mask_ratios[i] + self.mask_ratio_var[i] * u
            sampler = BlockMask(min(max(ratio, 0.0), 1.0), min_cells=min_cells, max_aspect=self.mask_aspect)
            rows.append(sampler(1, grid))
        return torch.cat(rows).to(device)

    def mask_of(self, view: Tokens) -> Tensor:
        """The student's mask for a global view: the pipeline's when it drew one, else fresh block masks."""
        if view.visible is not None:
            return view.mask
        return self.sample_masks(view.batch_size, view.grid, view.patches.device)

    def encode_masked(self, tokens: Tokens, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Student features of all cells with masked cells shown as the mask token: pooled (B, D), cells (B, N, D)."""
        enc = self.encoder
        x = enc.patch_embed(tokens.patches)  # (B, N, D)
        x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)  # (B, N, D)
        prefix, cells = enc.encode(x + enc.positions(tokens.grid, x))
        return (prefix[:, 0] if enc.num_prefix else cells.mean(1)), cells

    def forward(self, batch: dict) -> Output:
        views = batch.get("views")
        n_g = self.global_views
        if not views or len(views) < n_g:
            raise ValueError(f"iBOT needs batch['views'] with {n_g} global views first, got "
                             f"{0 if not views else len(views)}")
        full = concat_views([replace(v, visible=None) for v in views[:n_g]])  # (G*B) images, all cells
        mask = torch.cat([self.mask_of(v) for v in views[:n_g]])  # (G*B, N)
        grad = (self.progress >= self.freeze_last_layer).float()
        patch_head = self.head if self.patch_head is None else self.patch_head
        pooled, cells = self.encode_masked(full, mask)
        student_cls = [self.head(pooled, last_layer_grad=grad)]
        if len(views) > n_g:
            student_cls.append(self.head(torch.cat(encode_views(self.encoder, views[n_g:])), last_layer_grad=grad))
        student_cls = torch.cat(student_cls).chunk(len(views))  # V x (B, K)
        student_patch = patch_head(cells[mask], last_layer_grad=grad)  # (M, K')
        with torch.no_grad():
            t = self.teacher(full)
            t_cls = self.teacher_head(t.pooled).float()  # (G*B, K)
            t_patch_head = self.teacher_head if self.teacher_patch_head is None else self.teacher_patch_head
            t_patch = t_patch_head(t.tokens).float()  # (G*B, N, K')
            cls_targets = self.centering.probs(t_cls, self.temperature("cls"))
            patch_targets = self.patch_centering.probs(t_patch[mask], self.temperature("patch"))  # (M, K')
        cls_loss = multicrop_cross_entropy(cls_targets.chunk(n_g), student_cls, student_temp=self.student_temp)
        patch_loss = masked_patch_cross_entropy(patch_targets, student_patch, mask, student_temp=self.student_temp)
        loss = self.cls_weight * cls_loss + self.patch_weight * patch_loss
        self.centering.update(t_cls)
        self.patch_centering.update(t_patch.mean(1))  # iBOT: per-image mean over all cells, then the batch mean
        logs = {"cls_loss": cls_loss.detach(), "patch_loss": patch_loss.detach(),
                "mask_ratio": mask.float().mean(), "teacher_temp": self.temperature("cls"),
                **collapse_logs(cls_targets, pooled.detach())}
        loss = add_koleo(loss, logs, pooled, views=n_g, weight=self.koleo_weight)
        logs["loss"] = loss.detach()
        return Output(loss=loss, logs=logs)

    @torch.no_grad()
    def update(self, progress: float) -> None:
        """After an optimiser step: EMA of encoder and heads into the teacher; advance the schedules."""
        pairs = [(self.teacher, self.encoder), (self.teacher_head, self.head)]
        if self.patch_head is not None:
            pairs.append((self.teacher_patch_head, self.patch_head))
        advance_teacher_(self.progress, progress, momentum=self.momentum, pairs=pairs)
