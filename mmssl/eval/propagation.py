"""Label propagation through a video by feature affinity (Jabri et al. 2020, CRW; Caron et al. 2021, DINO).

Each frame's labels are a soft map (C, h, w) on the feature grid. A target cell looks at the cells of the
context (the first frame with its annotation, and the previous frames with their own predictions), keeps the
top-k most similar within a spatial radius, and takes the softmax(similarity / T)-weighted mean of their labels.

Memory stays bounded: features are consumed one frame at a time, the context is a ring of at most `context`
frames, and affinities are computed per tile of target cells against only the key cells a radius can reach,
so no (all cells x all context cells) matrix ever exists.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.eval.presets import PropagationSettings

__all__ = ["neighbourhood", "propagate_step", "propagate", "LabelRing"]


def neighbourhood(q_yx: Tensor, k_yx: Tensor, radius: float | None, window: str) -> Tensor:
    """Boolean (nq, nk): which key cells lie in the neighbourhood of which query cells.

    "disk" keeps Euclidean distance < radius (CRW's strict mask), "square" keeps |dy|, |dx| <= radius (DINO's).
    """
    if radius is None or radius <= 0:
        return torch.ones(q_yx.shape[0], k_yx.shape[0], dtype=torch.bool, device=q_yx.device)
    d = (q_yx[:, None, :] - k_yx[None, :, :]).float()  # (nq, nk, 2)
    if window == "disk":
        return (d * d).sum(-1) < radius * radius
    return d.abs().amax(-1) <= radius


def _cells(y0: int, y1: int, x0: int, x1: int, device: torch.device) -> Tensor:
    ys, xs = torch.meshgrid(torch.arange(y0, y1, device=device), torch.arange(x0, x1, device=device), indexing="ij")
    return torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=1)  # (n, 2) row-major cell coordinates


def _top(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    k = min(k, values.shape[-1])
    return values.topk(k, dim=-1)


def propagate_step(query: Tensor, local_feats: Tensor, local_labels: Tensor, settings: PropagationSettings, *,
                   global_feats: Tensor | None = None, global_labels: Tensor | None = None) -> Tensor:
    """Soft labels (h, w, C) of one target frame.

    Context tensors are laid out column-major, (w, h, T, ...), so the key cells of a window of columns are a
    strided batch of contiguous (rows x frames, D) matrices that a batched matmul reads without copying.

    Args:
        query: L2-normalised target features (h, w, D).
        local_feats: L2-normalised context features (w, h, T, D) that the radius applies to.
        local_labels: their soft labels (w, h, T, C).
        settings: top-k, radius, window, temperature and tile size.
        global_feats: context features (h, w, D) that every target cell sees whole (CRW's first frame).
        global_labels: their labels (h, w, C).
    """
    h, w, d = query.shape
    frames, c = local_feats.shape[2], local_labels.shape[-1]
    out = torch.empty(h, w, c, dtype=local_labels.dtype, device=query.device)
    limited = settings.radius is not None and settings.radius > 0
    reach = math.ceil(settings.radius) if limited else max(h, w)  # cells a radius can reach along one axis
    flat_labels = local_labels.reshape(-1, c)  # (w*h*T, C) when contiguous, else a copy made once
    if global_feats is not None:
        g_feats = global_feats.reshape(-1, d)  # (h*w, D)
        g_labels = global_labels.reshape(-1, c)  # (h*w, C)
    t = settings.tile
    for y0 in range(0, h, t):
        for x0 in range(0, w, t):
            y1, x1 = min(y0 + t, h), min(x0 + t, w)
            ky0, ky1, kx0, kx1 = max(0, y0 - reach), min(h, y1 + reach), max(0, x0 - reach), min(w, x1 + reach)
            nkx, nky = kx1 - kx0, ky1 - ky0
            q = query[y0:y1, x0:x1].reshape(-1, d)  # (nq, D)
            nq = q.shape[0]
            keys = local_feats[kx0:kx1, ky0:ky1].reshape(nkx, nky * frames, d)  # (nkx, nky*T, D), a view if full
            aff = torch.matmul(q, keys.transpose(1, 2))  # (nkx, nq, nky*T)
            near = neighbourhood(_cells(y0, y1, x0, x1, q.device),
                                 _cells(kx0, kx1, ky0, ky1, q.device).flip(1),  # key cells in (x, y) order
                                 settings.radius, settings.window)  # (nq, nkx*nky), the same for every frame
            near = near.view(nq, nkx, nky).transpose(0, 1)[..., None]  # (nkx, nq, nky, 1)
            aff.view(nkx, nq, nky, frames).masked_fill_(~near, float("-inf"))  # in place, (nkx, nq, nky, T)
            # top-k of the union is the top-k of the per-column top-ks: no (nq, all keys) copy is needed
            top, idx = _top(aff, settings.topk)  # (nkx, nq, k')
            kk = top.shape[-1]
            col = torch.arange(nkx, device=q.device).view(nkx, 1, 1)  # (nkx, 1, 1)
            # flat index into (w, h, T): column kx0 + col, row ky0 + idx // T, frame idx % T
            flat = ((kx0 + col) * h + ky0 + idx // frames) * frames + idx % frames  # (nkx, nq, k')
            top = top.permute(1, 0, 2).reshape(nq, nkx * kk)  # (nq, nkx*k')
            flat = flat.permute(1, 0, 2).reshape(nq, nkx * kk)  # (nq, nkx*k')
            top, pick = _top(top, settings.topk)  # (nq, k)
            labels = flat_labels[flat.gather(1, pick)]  # (nq, k, C)
            if global_feats is not None:
                g_top, g_idx = _top(q @ g_feats.T, settings.topk)  # (nq, k)
                top = torch.cat([top, g_top], dim=1)  # (nq, 2k)
                labels = torch.cat([labels, g_labels[g_idx]], dim=1)  # (nq, 2k, C)
                top, pick = _top(top, settings.topk)  # (nq, k)
                labels = labels.gather(1, pick[..., None].expand(-1, -1, c))  # (nq, k, C)
            # a query sees at least its own cell in every local frame, so some weight is always finite
            weights = torch.softmax(top / settings.temperature, dim=1)  # (nq, k)
            pred = (weights[..., None] * labels).sum(1)  # (nq, C)
            out[y0:y1, x0:x1] = pred.view(y1 - y0, x1 - x0, c)  # (th, tw, C)
    return out


class LabelRing:
    """The bounded context: the first frame plus a ring of the last `context` frames with their labels.

    With `restrict_first` the first frame lives in slot 0 of the ring (the radius applies to it as to the
    others); otherwise it is kept apart and seen whole.
    """

    def __init__(self, first_feats: Tensor, first_labels: Tensor, settings: PropagationSettings) -> None:
        self.settings = settings
        self.first_feats, self.first_labels = first_feats, first_labels
        self.base = 1 if settings.restrict_first else 0
        slots = settings.context + self.base
        h, w = first_feats.shape[:2]
        self.feats = first_feats.new_empty(w, h, slots, first_feats.shape[-1])  # (w, h, S, D)
        self.labels = first_labels.new_empty(w, h, slots, first_labels.shape[-1])  # (w, h, S, C)
        if self.base:
            self._write(0, first_feats, first_labels)
        self.count = 0
        self.next = 0
        if settings.pad_first:
            # CRW pads the video with copies of frame 0, so early targets see frame 0 n + 1 times
            for _ in range(settings.context):
                self.push(first_feats, first_labels)

    def _write(self, slot: int, feats: Tensor, labels: Tensor) -> None:
        self.feats[:, :, slot] = feats.transpose(0, 1)  # (w, h, D)
        self.labels[:, :, slot] = labels.transpose(0, 1)  # (w, h, C)

    def push(self, feats: Tensor, labels: Tensor) -> None:
        """Adds a frame (h, w, D) with its labels (h, w, C), dropping the oldest when the ring is full."""
        n = self.settings.context
        if n == 0:
            return
        self._write(self.base + self.next, feats, labels)
        self.next = (self.next + 1) % n
        self.count = min(self.count + 1, n)

    def predict(self, query: Tensor) -> Tensor:
        """Soft labels (h, w, C) of the target frame with L2-normalised features `query` (h, w, D)."""
        s = self.settings
        used = self.base + self.count
        if used == 0:
            # only the first frame, which the radius does not limit, is in the context
            first_f = self.first_feats.transpose(0, 1)[:, :, None]  # (h, w, D) -> (w, h, 1, D)
            first_l = self.first_labels.transpose(0, 1)[:, :, None]  # (h, w, C) -> (w, h, 1, C)
            return propagate_step(query, first_f, first_l, replace(s, radius=None))
        local_f, local_l = self.feats[:, :, :used], self.labels[:, :, :used]  # (w, h, used, D), (w, h, used, C)
        if s.restrict_first:
            return propagate_step(query, local_f, local_l, s)
        return propagate_step(query, local_f, local_l, s, global_feats=self.first_feats,
                              global_labels=self.first_labels)


def propagate(features: Iterable[Tensor], first_labels: Tensor, settings: PropagationSettings) -> Iterator[Tensor]:
    """Propagates the first frame's labels through a video, one frame at a time.

    Args:
        features: per-frame feature maps (D, h, w), first frame first; consumed lazily.
        first_labels: the first frame's labels on the feature grid (C, h, w).
        settings: propagation settings.

    Yields:
        Soft labels (C, h, w) of every frame after the first, in order.
    """
    it = iter(features)
    first = F.normalize(next(it).float(), dim=0).permute(1, 2, 0).contiguous()  # (h, w, D)
    labels0 = first_labels.float().permute(1, 2, 0).contiguous()  # (h, w, C)
    if labels0.shape[:2] != first.shape[:2]:
        raise ValueError(f"labels grid {tuple(labels0.shape[:2])} differs from the feature grid "
                         f"{tuple(first.shape[:2])}")
    ring = LabelRing(first, labels0, settings)
    for feats in it:
        query = F.normalize(feats.float(), dim=0).permute(1, 2, 0).contiguous()  # (h, w, D)
        pred = ring.predict(query)  # (h, w, C)
        ring.push(query, pred)
        yield pred.permute(2, 0, 1)  # (C, h, w)
