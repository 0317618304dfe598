"""The two sides of `benchmarks/train_step.py` (also used by `benchmarks/pipeline_gpu.py`): model specs, ours and
the reference built with the same weights, inputs in both forms, one optimiser step of each, the FLOP count.

Ours is one step as `recipes/pretrain.py` runs it, made fast: bf16 autocast over fp32 weights, SDPA attention,
fused AdamW (`build_adamw`), `torch.compile` of the whole method, inputs whose visible indices the data pipeline
drew, and nothing that makes the host wait for the device. The reference step repeats the reference engines' work
(MAE `engine_pretrain.py`, VideoMAE `engine_for_pretraining.py`): fp16 autocast + GradScaler, `loss.item()` and a
finiteness check, unscale and a grad norm, a plain AdamW, `torch.cuda.synchronize()`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.reference_models import ReferenceMAE, ReferenceVideoMAE, load_from_ours  # noqa: E402
from mmssl.modalities import get_modality  # noqa: E402
from mmssl.tokens import Tokens, TubeMask, patchify, visible_from_mask  # noqa: E402

__all__ = ["Spec", "SPECS", "Batch", "build_ours", "build_reference", "make_batches", "OursStep", "ReferenceStep",
           "step_flops", "sync"]


@dataclass(frozen=True)
class Spec:
    """One benchmarked model: encoder by timm name, decoder sizes, input size, default batch."""

    method: str  # "mae" or "videomae"
    encoder: str
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    mask_ratio: float
    size: int  # H = W
    frames: int = 0  # video clip length; 0 for images
    batch: int = 32
    depth: int | None = None  # encoder depth override (tiny configs)

    @property
    def video(self) -> bool:
        return self.method == "videomae"

    @property
    def modality(self):
        return get_modality("video" if self.video else "image")

    @property
    def grid(self) -> tuple[int, ...]:
        patch = self.modality.patch
        sizes = ((self.frames,) if self.video else ()) + (self.size, self.size)
        return tuple(s // p for s, p in zip(sizes, patch))


SPECS = {
    "mae": Spec("mae", "vit_base_patch16_224", 512, 8, 16, 0.75, 224, batch=256),
    "videomae": Spec("videomae", "vit_base_patch16_224", 384, 4, 6, 0.9, 224, frames=16, batch=32),
    "mae-tiny": Spec("mae", "vit_tiny_patch16_224", 64, 1, 2, 0.75, 64, batch=4, depth=2),
    "videomae-tiny": Spec("videomae", "vit_tiny_patch16_224", 64, 1, 2, 0.9, 64, frames=4, batch=2, depth=2),
}


def build_ours(spec: Spec, *, seed: int = 0) -> torch.nn.Module:
    """mmssl's MAE / VideoMAE as the configs build it (image/mae_vit_base.yaml, video/videomae_vit_base.yaml)."""
    from mmssl.methods.mae import MAE
    from mmssl.methods.videomae import VideoMAE
    from mmssl.models import TokenEncoder

    torch.manual_seed(seed)
    encoder = TokenEncoder(spec.encoder, modality=spec.modality.name, depth=spec.depth, cls_token=not spec.video,
                           pos_embed="sinusoid" if spec.video else "sincos")
    kind = VideoMAE if spec.video else MAE
    return kind(encoder, mask_ratio=spec.mask_ratio, decoder_dim=spec.decoder_dim, decoder_depth=spec.decoder_depth,
                decoder_heads=spec.decoder_heads)


def build_reference(spec: Spec, ours: torch.nn.Module, *, sdpa: bool = False) -> torch.nn.Module:
    """The baseline with ours' weights copied in."""
    enc = ours.encoder
    sizes = dict(dim=enc.dim, depth=enc.depth, heads=enc.heads, decoder_dim=spec.decoder_dim,
                 decoder_depth=spec.decoder_depth, decoder_heads=spec.decoder_heads, sdpa=sdpa)
    if spec.video:
        ref = ReferenceVideoMAE(frames=spec.frames, image=spec.size, tubelet=spec.modality.patch, **sizes)
    else:
        ref = ReferenceMAE(image=spec.size, patch=spec.modality.patch[0], mask_ratio=spec.mask_ratio, **sizes)
    load_from_ours(ref.to(next(ours.parameters()).device), ours, spec.grid)
    return ref


@dataclass
class Batch:
    """One input in both forms: ours (a method batch with Tokens and drawn visible indices), the reference's."""

    ours: dict
    ref: tuple[Tensor, Tensor] | None  # MAE: (images, noise); VideoMAE: (clips, bool mask); None: ours only
    size: int


def make_batches(spec: Spec, batch: int, count: int, device: torch.device, *, seed: int = 0) -> list[Batch]:
    """`count` random normalised batches with one mask each, built on the CPU (as the data pipeline would) and
    moved to `device`; ours gets patches and visible indices, the reference the dense tensor and its mask input."""
    g = torch.Generator().manual_seed(seed)
    modality, n = spec.modality, math.prod(spec.grid)
    out = []
    for _ in range(count):
        shape = (batch, 3, spec.frames, spec.size, spec.size) if spec.video else (batch, 3, spec.size, spec.size)
        x = modality.normalize(torch.rand(shape, generator=g))
        if spec.video:
            mask = TubeMask(spec.mask_ratio)(batch, spec.grid, generator=g)  # (B, N) True = hidden
            visible, ref_mask = visible_from_mask(mask), mask
        else:
            noise = torch.rand(batch, n, generator=g)  # MAE keeps the lowest-noise tokens
            keep = int(n * (1 - spec.mask_ratio))
            visible, ref_mask = torch.argsort(noise, dim=1)[:, :keep].sort(dim=1).values, noise
        patches, grid = patchify(x, modality.patch)
        tokens = Tokens(patches, grid, modality.patch, modality.name, visible=visible).to(device)
        out.append(Batch({modality.name: tokens}, (x.to(device), ref_mask.to(device)), batch))
    return out


def sync(device: torch.device) -> None:
    """Waits for the device (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class OursStep:
    """One optimiser step of ours: autocast forward, backward, fused AdamW, no host sync; returns the loss tensor."""

    def __init__(self, method: torch.nn.Module, *, device: torch.device, amp: torch.dtype | None,
                 compile: bool, lr: float = 1.5e-4, weight_decay: float = 0.05) -> None:
        from mmssl.train.optim import build_adamw

        self.method, self.device, self.amp = method, device, amp
        self.opt = build_adamw(method, lr=lr, weight_decay=weight_decay)  # fused when on CUDA
        self.forward = torch.compile(method) if compile else method

    def loss(self, batch: Batch) -> Tensor:
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            return self.forward(batch.ours).loss

    def forward_backward(self, batch: Batch) -> Tensor:
        """Everything before the optimiser update."""
        loss = self.loss(batch)
        loss.backward()
        return loss.detach()

    def __call__(self, batch: Batch) -> Tensor:
        loss = self.forward_backward(batch)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss


def _reference_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """timm's `add_weight_decay` as the references call it: no decay on 1-D parameters and biases."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": plain, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


class ReferenceStep:
    """The reference engines' step (MAE `engine_pretrain`, VideoMAE `engine_for_pretraining`)."""

    def __init__(self, model: torch.nn.Module, spec: Spec, *, device: torch.device, amp: torch.dtype | None,
                 lr: float = 1.5e-4, weight_decay: float = 0.05) -> None:
        self.model, self.spec, self.device, self.amp = model, spec, device, amp
        self.opt = torch.optim.AdamW(_reference_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95))
        # the references' NativeScaler: a GradScaler on CUDA (a no-op pass-through when disabled)
        self.scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and amp == torch.float16)
        m = spec.modality
        self.mean = torch.tensor(m.mean, device=device)
        self.std = torch.tensor(m.std, device=device)

    def loss(self, batch: Batch) -> Tensor:
        x, mask = batch.ref
        if self.spec.video:
            labels = self.model.labels(x, mask, self.mean, self.std)  # outside autocast, as the engine does
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            if not self.spec.video:
                return self.model(x, mask)
            return torch.nn.functional.mse_loss(self.model(x, mask), labels)

    def forward_backward(self, batch: Batch) -> Tensor:
        """Everything before the optimiser update: loss, its host-side check, scaled backward, unscale, norm."""
        loss = self.loss(batch)
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(f"baseline loss is {value}")
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        grads = [p.grad.detach() for p in self.model.parameters() if p.grad is not None]
        torch.norm(torch.stack([torch.norm(g, 2.0) for g in grads]), 2.0)  # the engines' logged grad norm
        return loss.detach()

    def __call__(self, batch: Batch) -> Tensor:
        loss = self.forward_backward(batch)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad()
        sync(self.device)
        return loss


def step_flops(spec: Spec, method: torch.nn.Module, batch: int) -> float:
    """Matmul FLOPs of one training step of ours (2 per multiply-add; backward twice the forward, except the patch
    embedding, whose input needs no gradient). Norms, softmax and the loss are left out, as usual for MFU."""
    enc, n = method.encoder, math.prod(spec.grid)
    d, dd, p = enc.dim, spec.decoder_dim, spec.modality.patch_dim
    ratio = enc.blocks[0].mlp.fc1.out_features / d
    if spec.video:
        hw = math.prod(spec.grid[1:])
        visible = spec.grid[0] * (hw - int(spec.mask_ratio * hw))
    else:
        visible = int(n * (1 - spec.mask_ratio))
    prefix = enc.num_prefix

    def blocks(tokens: int, width: int, depth: int) -> float:
        linear = 2 * tokens * (4 + 2 * ratio) * width * width  # qkv, proj and the MLP
        return depth * (linear + 4 * tokens * tokens * width)  # + q k^T and attn v

    forward = blocks(visible + prefix, d, enc.depth) + 2 * (visible + prefix) * d * dd \
        + blocks(n + prefix, dd, spec.decoder_depth) + 2 * n * dd * p
    return batch * (3 * forward + 2 * 2 * visible * p * d)
