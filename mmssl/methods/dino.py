"""DINO: Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021; with the DINOv2
parts (Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", 2023) as options.

Self-distillation without labels: a student matches the output distribution of a teacher that is an EMA of
itself. Follows facebookresearch/dino `main_dino.py` (REFERENCE.md §1.6):
- multi-crop: `batch["views"]` holds 2 global views and N local ones; the student sees all of them, the teacher
  only the first `global_views`; views of one resolution run as one batch (DINO's `MultiCropWrapper`);
- backbone [CLS] -> `DINOHead` (MLP, L2-normalised bottleneck, weight-normalised prototypes, `norm_last_layer`);
- loss: for every teacher view q and student view v != q, the batch mean of -sum_k P_t(q)_k log P_s(v)_k with
  P_s = softmax(s / 0.1) and P_t = softmax((t - c) / tau_t), averaged over the pairs;
- centering: c <- 0.9 c + 0.1 mean(t) over both global views of the whole (all-reduced) batch, after the loss;
- the teacher temperature rises linearly from 0.04 to `teacher_temp` over the first `teacher_temp_warmup` of
  training; the teacher EMA momentum follows a cosine from 0.996 to 1 (`update(progress)`);
- the prototype layer gets no gradient while progress < `freeze_last_layer` (DINO: the first epoch). Here its
  gradient is zero rather than None, so AdamW still applies weight decay to it; with `norm_last_layer` that
  cannot change the layer's output (only the directions of `v` count).
The weight-decay cosine (0.04 -> 0.4) and gradient clipping (3.0) are the recipe's `optim.weight_decay_end` and
`optim.clip_grad`; note the recipe clips the global gradient norm where DINO clips each parameter's norm.

DINOv2 parts: `centering="sinkhorn"` replaces centering with 3 Sinkhorn-Knopp iterations on the teacher's
logits (`sinkhorn_knopp_teacher`), and `koleo_weight` (DINOv2: 0.1) adds the KoLeo regulariser
-1/n sum_i log min_j ||x_i - x_j|| on the L2-normalised student [CLS] features, summed over the global views.

Collapse is watched in the logs: `teacher_entropy` (mean entropy of P_t), `teacher_batch_entropy` (entropy of the
batch-mean P_t: near 0 when every sample lands on one prototype) and `embedding_std` (the std over the batch of
L2-normalised backbone features, about 1/sqrt(D) when healthy and 0 when collapsed).
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.methods.output import Output
from mmssl.methods.views import encode_views
from mmssl.models import TokenEncoder
from mmssl.models.dino_head import DINOHead
from mmssl.tokens import Tokens
from mmssl.train.distributed import is_distributed, world_size
from mmssl.train.ema import ema_update_
from mmssl.train.schedules import cosine_increase

__all__ = ["DINO", "TeacherCentering", "multicrop_cross_entropy", "sinkhorn_knopp", "koleo_loss", "add_koleo",
           "advance_teacher_", "collapse_logs", "warmup_value", "frozen_copy", "CENTERINGS"]

CENTERINGS = ("center", "sinkhorn", "none")


def _all_reduce(x: Tensor, op: tdist.ReduceOp = tdist.ReduceOp.SUM) -> Tensor:
    if is_distributed():
        tdist.all_reduce(x, op=op)
    return x


def multicrop_cross_entropy(teacher_probs: Sequence[Tensor], student_logits: Sequence[Tensor], *,
                            student_temp: float) -> Tensor:
    """DINO's loss: mean over pairs (teacher view q, student view v != q) of the batch-mean cross-entropy.

    Args:
        teacher_probs: one (B, K) distribution per global view, in the order of the first student views.
        student_logits: one (B, K) tensor of raw logits per view (global views first).
        student_temp: the student's softmax temperature (0.1).
    """
    total, terms = 0.0, 0
    log_p = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student_logits]
    for q, p_t in enumerate(teacher_probs):
        for v, lp in enumerate(log_p):
            if v == q:  # the teacher and the student saw the same view: no target there
                continue
            total = total + (-(p_t * lp).sum(-1)).mean()
            terms += 1
    if terms == 0:
        raise ValueError("DINO's loss needs at least two views")
    return total / terms


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, *, temperature: Tensor | float, iterations: int = 3) -> Tensor:
    """DINOv2's Sinkhorn-Knopp teacher targets: rows (samples) of the returned (B, K) sum to 1, and after enough
    iterations every prototype gets B / K of the mass; the batch is all ranks' rows (sums are all-reduced)."""
    scaled = logits.float() / temperature
    # subtracting one constant shared by all ranks changes nothing after normalising, but keeps exp() finite;
    # a rank without rows (no masked patch this step) still joins every all-reduce
    top = scaled.max() if scaled.numel() else scaled.new_tensor(float("-inf"))
    scaled = scaled - _all_reduce(top.clone(), tdist.ReduceOp.MAX)
    q = scaled.exp().t()  # (K, B): prototypes x samples, the paper's notation
    k = q.shape[0]
    b = _all_reduce(torch.tensor(float(q.shape[1]), device=q.device))  # rows on all ranks (DINOv2 counts them)
    q = q / _all_reduce(q.sum())
    for _ in range(iterations):
        q = q / _all_reduce(q.sum(dim=1, keepdim=True)) / k  # each prototype's mass -> 1/K
        q = q / q.sum(dim=0, keepdim=True) / b  # each sample's mass -> 1/B
    return (q * b).t()  # (B, K): each sample's assignment sums to 1


def koleo_loss(x: Tensor, *, eps: float = 1e-8) -> Tensor:
    """KoLeo (Sablayrolles et al. 2019; DINOv2): -mean_i log ||x_i - x_nn(i)|| on L2-normalised rows of (B, D)."""
    x = F.normalize(x.float(), dim=-1, eps=eps)
    with torch.no_grad():
        dots = x @ x.t()  # (B, B) cosine similarities
        dots.fill_diagonal_(-2.0)  # a sample is not its own neighbour
        nearest = dots.argmax(dim=1)
    dist = (x - x[nearest] + eps).norm(dim=-1)  # as torch's PairwiseDistance(eps) that DINOv2 uses
    return -(dist + eps).log().mean()



def add_koleo(loss: Tensor, logs: dict[str, Tensor], global_feats: Tensor, *, views: int, weight: float) -> Tensor:
    """`loss` plus `weight` times KoLeo summed over the `views` global views of `global_feats` (V*B, D), as DINOv2
    sums it; logs the KoLeo term. `loss` unchanged when `weight` is 0 (DINO, iBOT)."""
    if weight <= 0:
        return loss
    koleo = sum(koleo_loss(f) for f in global_feats.chunk(views))
    logs["koleo"] = koleo.detach()
    return loss + weight * koleo


@torch.no_grad()
def advance_teacher_(progress_buffer: Tensor, progress: float, *, momentum: float,
                     pairs: Sequence[tuple[nn.Module, nn.Module]]) -> None:
    """Stores `progress` (clamped to [0, 1]) and moves each (teacher, student) pair's teacher towards its student
    with DINO's momentum, cosine-increased from `momentum` to 1."""
    progress_buffer.fill_(min(max(progress, 0.0), 1.0))
    m = cosine_increase(min(progress, 1.0), base=momentum)
    for teacher, student in pairs:
        ema_update_(teacher, student, m)

def _entropy(p: Tensor) -> Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


@torch.no_grad()
def collapse_logs(teacher_probs: Tensor, features: Tensor) -> dict[str, Tensor]:
    """The collapse watch: mean teacher entropy, entropy of the batch-mean teacher distribution, and the std over
    the batch of L2-normalised features (mean over dimensions)."""
    normed = F.normalize(features.float(), dim=-1)
    std = normed.std(dim=0).mean() if normed.shape[0] > 1 else normed.new_zeros(())
    return {"teacher_entropy": _entropy(teacher_probs).mean(), "teacher_batch_entropy": _entropy(teacher_probs.mean(0)),
            "embedding_std": std}


def warmup_value(progress: Tensor, *, start: float, end: float, share: float) -> Tensor:
    """Linear from `start` to `end` over the first `share` of training, then `end` (tensor in, tensor out)."""
    if share <= 0:
        return torch.full_like(progress, end)
    return start + (end - start) * (progress / share).clamp(max=1.0)


class TeacherCentering(nn.Module):
    """Turns teacher logits into targets: centred and sharpened (DINO), Sinkhorn-Knopp (DINOv2), or sharpened only.

    Args:
        dim: number of prototypes K.
        mode: "center", "sinkhorn" or "none" (sharpening only: collapses, kept for the ablation).
        momentum: EMA momentum of the centre (0.9).
        iterations: Sinkhorn-Knopp iterations (3).
    """

    def __init__(self, dim: int, *, mode: str = "center", momentum: float = 0.9, iterations: int = 3) -> None:
        super().__init__()
        if mode not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, got {mode!r}")
        self.mode, self.momentum, self.iterations = mode, momentum, iterations
        self.register_buffer("center", torch.zeros(dim))

    def probs(self, logits: Tensor, temperature: Tensor | float) -> Tensor:
        """Targets (..., K) for teacher logits (..., K)."""
        logits = logits.float()
        if self.mode == "sinkhorn":
            flat = logits.reshape(-1, logits.shape[-1])  # (M, K): every row is one sample to assign
            return sinkhorn_knopp(flat, temperature=temperature, iterations=self.iterations).reshape(logits.shape)
        if self.mode == "center":
            logits = logits - self.center
        return F.softmax(logits / temperature, dim=-1)

    @torch.no_grad()
    def update(self, logits: Tensor) -> None:
        """c <- m c + (1 - m) * mean of the rows of `logits` (M, K) over all ranks; a no-op unless mode="center"."""
        if self.mode != "center":
            return
        total = _all_reduce(logits.float().sum(0))
        batch_mean = total / (logits.shape[0] * world_size())
        self.center.mul_(self.momentum).add_(batch_mean, alpha=1 - self.momentum)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy for the EMA teacher: no gradients, eval mode (no drop-path)."""
    copied = copy.deepcopy(module)
    copied.requires_grad_(False)
    return copied.eval()


class DINO(nn.Module):
    """Self-distillation with no labels over multi-crop views.

    Args:
        encoder: a `TokenEncoder` with a [CLS] token (DINO's ViT); its modality names what the views are.
        out_dim: prototypes in the head (DINO: 65536).
        hidden_dim: head MLP width (2048).
        bottleneck_dim: head bottleneck width (256).
        head_layers: head MLP layers (3).
        norm_last_layer: fix the prototype norms (DINO: True for ViT-B, False for ViT-S).
        global_views: how many leading views are global and go through the teacher (2).
        student_temp: student temperature (0.1).
        teacher_temp: teacher temperature after warmup (0.04; 0.07 in DINO's longer runs).
        warmup_teacher_temp: teacher temperature at the start (0.04).
        teacher_temp_warmup: share of training over which the teacher temperature rises (DINO: 30 of 300 epochs).
        center_momentum: EMA momentum of the centre (0.9).
        momentum: base teacher EMA momentum, cosine-increased to 1 (0.996).
        freeze_last_layer: share of training during which the prototype layer is not trained (DINO: 1 epoch).
        centering: "center" (DINO), "sinkhorn" (DINOv2) or "none" (sharpening only; collapses).
        sinkhorn_iterations: Sinkhorn-Knopp iterations (DINOv2: 3).
        koleo_weight: weight of the KoLeo regulariser on the global views' student [CLS] (DINOv2: 0.1; 0 is off).
    """

    modalities = ("image", "video", "audio")

    def __init__(self, encoder: TokenEncoder, *, out_dim: int = 65536, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, head_layers: int = 3, norm_last_layer: bool = True,
                 global_views: int = 2, student_temp: float = 0.1, teacher_temp: float = 0.04,
                 warmup_teacher_temp: float = 0.04, teacher_temp_warmup: float = 0.1, center_momentum: float = 0.9,
                 momentum: float = 0.996, freeze_last_layer: float = 0.01, centering: str = "center",
                 sinkhorn_iterations: int = 3, koleo_weight: float = 0.0) -> None:
        super().__init__()
        if global_views < 1:
            raise ValueError(f"global_views must be at least 1, got {global_views}")
        self.encoder = encoder
        self.head = DINOHead(encoder.dim, out_dim, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim,
                             layers=head_layers, norm_last_layer=norm_last_layer)
        self.teacher = frozen_copy(encoder)
        self.teacher_head = frozen_copy(self.head)
        self.centering = TeacherCentering(out_dim, mode=centering, momentum=center_momentum,
                                          iterations=sinkhorn_iterations)
        self.global_views, self.student_temp = global_views, student_temp
        self.teacher_temp, self.warmup_teacher_temp = teacher_temp, warmup_teacher_temp
        self.teacher_temp_warmup, self.momentum = teacher_temp_warmup, momentum
        self.freeze_last_layer, self.koleo_weight = freeze_last_layer, koleo_weight
        # training progress in [0, 1], a buffer so that a resumed run continues its schedules where it stopped
        self.register_buffer("progress", torch.zeros(()))

    def train(self, mode: bool = True) -> "DINO":
        super().train(mode)
        self.teacher.eval()  # no drop-path in the teacher
        self.teacher_head.eval()
        return self

    def temperature(self) -> Tensor:
        """The teacher temperature at the current progress."""
        return warmup_value(self.progress, start=self.warmup_teacher_temp, end=self.teacher_temp,
                            share=self.teacher_temp_warmup)

    def last_layer_grad(self) -> Tensor:
        """1 once the prototype layer trains, 0 while it is frozen."""
        return (self.progress >= self.freeze_last_layer).float()

    def views(self, batch: dict) -> list[Tokens]:
        views = batch.get("views")
        if not views or len(views) < max(self.global_views, 2):
            raise ValueError(f"DINO needs batch['views'] with {self.global_views} global views first and at least "
                             f"two views in all, got {0 if not views else len(views)}")
        return list(views)

    def forward(self, batch: dict) -> Output:
        views = self.views(batch)
        n_global = self.global_views
        feats = torch.cat(encode_views(self.encoder, views))  # (V*B, D)
        student = self.head(feats, last_layer_grad=self.last_layer_grad()).chunk(len(views))  # V x (B, K)
        with torch.no_grad():
            teacher_feats = torch.cat(encode_views(self.teacher, views[:n_global]))  # (G*B, D)
            teacher_logits = self.teacher_head(teacher_feats).float()  # (G*B, K)
            targets = self.centering.probs(teacher_logits, self.temperature())
        loss = dino = multicrop_cross_entropy(targets.chunk(n_global), student, student_temp=self.student_temp)
        self.centering.update(teacher_logits)
        global_feats = feats[:n_global * views[0].batch_size]
        logs = {"dino_loss": dino.detach(), "teacher_temp": self.temperature().detach(),
                **collapse_logs(targets, global_feats.detach())}
        loss = add_koleo(loss, logs, global_feats, views=n_global, weight=self.koleo_weight)
        logs["loss"] = loss.detach()
        return Output(loss=loss, logs=logs)

    @torch.no_grad()
    def update(self, progress: float) -> None:
        """After an optimiser step: move the teacher towards the student and advance the schedules."""
        advance_teacher_(self.progress, progress, momentum=self.momentum,
                         pairs=[(self.teacher, self.encoder), (self.teacher_head, self.head)])
