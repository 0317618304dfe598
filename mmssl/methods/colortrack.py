"""Colorization-based tracking: Vondrick et al., "Tracking Emerges by Colorizing Videos", ECCV 2018.

No official code; this follows the paper and REFERENCE.md §1.19 (re-implementations `wbaek/tracking_via_colorization`,
`LapTQ/tracking-emerges-by-colorizing-videos`):
- a sample is 3 reference frames and 1 target frame of one video (`batch["frames"]`, the target last), all seen in
  grayscale by the embedding network (`mmssl.models.tracker.TrackerEncoder`);
- colour is Lab; the ab channels at the feature resolution are quantised into 16 clusters by k-means fitted on
  training data: here on the first training batch, then kept as a buffer so they travel in the checkpoint;
- pointer: `A_ij = softmax_i(f_i . f_j / T)` over all reference pixels i for each target pixel j; the predicted
  colour distribution is `sum_i A_ij c_i` with c_i the one-hot cluster of reference pixel i;
- loss: cross-entropy of that distribution against the target's quantised colour;
- T = 1 in training and 0.5 at test (`colorizer.py`: `temperature = 1.0 if is_training else 0.5`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.color import rgb_to_lab
from mmssl.methods.output import Output
from mmssl.models.tracker import TrackerEncoder

__all__ = ["ColorTrack", "kmeans", "quantize", "dequantize", "pointer"]


def kmeans(points: Tensor, k: int, *, iters: int = 30, generator: torch.Generator | None = None) -> Tensor:
    """Lloyd's k-means with k-means++ seeding: points (N, C) -> centres (k, C).

    A cluster left empty keeps its previous centre.
    """
    points = points.float()
    n = points.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least k={k} points, got {n}")
    first = torch.randint(n, (1,), generator=generator).item()
    centers = [points[first]]
    dist2 = (points - centers[0]).pow(2).sum(1)
    for _ in range(1, k):  # k-means++: sample the next centre with probability proportional to D(x)^2
        probs = dist2 / dist2.sum() if dist2.sum() > 0 else torch.full_like(dist2, 1.0 / n)
        nxt = torch.multinomial(probs, 1, generator=generator).item()
        centers.append(points[nxt])
        dist2 = torch.minimum(dist2, (points - points[nxt]).pow(2).sum(1))
    c = torch.stack(centers)  # (k, C)
    for _ in range(iters):
        assign = torch.cdist(points, c).argmin(1)  # (N,)
        sums = torch.zeros_like(c).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).to(c.dtype)
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
    return c


def quantize(ab: Tensor, centers: Tensor) -> Tensor:
    """Nearest-centre cluster of each pixel: ab (..., 2, H, W), centres (K, 2) -> ids (..., H, W)."""
    pixels = ab.movedim(-3, -1)  # (..., 2, H, W) -> (..., H, W, 2)
    d2 = (pixels.unsqueeze(-2) - centers.to(pixels)).pow(2).sum(-1)  # (..., H, W, K)
    return d2.argmin(-1)


def dequantize(ids: Tensor, centers: Tensor) -> Tensor:
    """Cluster ids (..., H, W) -> their centres' colours (..., 2, H, W)."""
    return centers[ids].movedim(-1, -3)  # (..., H, W, 2) -> (..., 2, H, W)


def pointer(refs: Tensor, targets: Tensor, values: Tensor, *, temperature: float) -> Tensor:
    """Copies values from reference to target pixels by embedding similarity.

    Args:
        refs: reference embeddings (B, N, D), N = all pixels of all reference frames.
        targets: target embeddings (B, M, D).
        values: what each reference pixel carries (B, N, C) (one-hot colours, soft labels).
        temperature: softmax temperature T.

    Returns:
        (B, M, C): `sum_i softmax_i(f_i . f_j / T) values_i` for each target pixel j.
    """
    logits = targets @ refs.transpose(1, 2) / temperature  # (B, M, N)
    return logits.float().softmax(-1) @ values.float()  # (B, M, C)


class ColorTrack(nn.Module):
    """Learns to colour a gray target frame by pointing into gray reference frames.

    Args:
        encoder: a `TrackerEncoder` (gray ResNet at stride 8 + dilated 3-D convs -> 64-d embeddings).
        clusters: number of ab colour clusters (16).
        references: reference frames before the target (3).
        temperature: pointer softmax temperature in training (1.0).
        test_temperature: the same at evaluation (0.5).
        kmeans_pixels: ab pixels sampled from the first training batch to fit the clusters.
        kmeans_iters: Lloyd iterations.
        seed: seed of the k-means sampling (the clusters are the same on every run and rank).
    """

    modalities = ("image",)

    def __init__(self, encoder: TrackerEncoder, *, clusters: int = 16, references: int = 3,
                 temperature: float = 1.0, test_temperature: float = 0.5, kmeans_pixels: int = 100_000,
                 kmeans_iters: int = 30, seed: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.modality = encoder.modality
        self.clusters, self.references = clusters, references
        self.temperature, self.test_temperature = temperature, test_temperature
        self.kmeans_pixels, self.kmeans_iters, self.seed = kmeans_pixels, kmeans_iters, seed
        self.register_buffer("centers", torch.zeros(clusters, 2))  # ab cluster centres, saved with the model
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def clips(self, batch: dict) -> Tensor:
        """The normalised frames (B, R+1, 3, H, W), the target last."""
        frames = batch["frames"]
        if len(frames) != self.references + 1:
            raise ValueError(f"ColorTrack needs batch['frames'] = {self.references} references + 1 target, "
                             f"got {len(frames)} frames")
        return torch.stack([f.image() for f in frames], dim=1)  # (B, R+1, 3, H, W)

    def ab(self, clips: Tensor, size: tuple[int, int]) -> Tensor:
        """Lab ab channels of normalised clips (B, T, 3, H, W), averaged down to `size`: (B, T, 2, h, w)."""
        rgb = self.modality.denormalize(clips.flatten(0, 1).float()).clamp(0, 1)  # (B*T, 3, H, W)
        ab = F.adaptive_avg_pool2d(rgb_to_lab(rgb)[:, 1:], size)  # (B*T, 2, h, w)
        return ab.unflatten(0, clips.shape[:2])  # (B*T, 2, h, w) -> (B, T, 2, h, w)

    @torch.no_grad()
    def fit_colors(self, ab: Tensor) -> None:
        """Fits the clusters to ab pixels (..., 2, h, w) and stores them (rank 0's on every rank)."""
        pixels = ab.movedim(-3, -1).reshape(-1, 2).float()  # (..., 2, h, w) -> (P, 2)
        gen = torch.Generator().manual_seed(self.seed)
        if pixels.shape[0] > self.kmeans_pixels:
            pixels = pixels[torch.randperm(pixels.shape[0], generator=gen)[:self.kmeans_pixels].to(pixels.device)]
        centers = kmeans(pixels.cpu(), self.clusters, iters=self.kmeans_iters, generator=gen)
        self.centers.copy_(centers.to(self.centers.device))
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(self.centers, src=0)
        self.fitted.fill_(True)

    def colorize(self, clips: Tensor) -> tuple[Tensor, Tensor]:
        """Predicted colour-cluster probabilities of the target (B, K, h, w) and its true clusters (B, h, w)."""
        emb = self.encoder.embed(clips)  # (B, R+1, D, h, w)
        b, t, d, h, w = emb.shape
        ab = self.ab(clips, (h, w))  # (B, R+1, 2, h, w)
        if not bool(self.fitted):
            if not self.training:
                raise RuntimeError("ColorTrack's colour clusters are not fitted: train first or call fit_colors")
            self.fit_colors(ab)
        ids = quantize(ab, self.centers)  # (B, R+1, h, w)
        refs = emb[:, :-1].permute(0, 1, 3, 4, 2).reshape(b, -1, d)  # (B, R, D, h, w) -> (B, R*h*w, D)
        target = emb[:, -1].flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D)
        colors = F.one_hot(ids[:, :-1].reshape(b, -1), self.clusters)  # (B, R*h*w, K)
        temperature = self.temperature if self.training else self.test_temperature
        probs = pointer(refs, target, colors, temperature=temperature)  # (B, h*w, K)
        return probs.transpose(1, 2).reshape(b, self.clusters, h, w), ids[:, -1]  # (B, h*w, K) -> (B, K, h, w)

    def forward(self, batch: dict) -> Output:
        probs, target = self.colorize(self.clips(batch))
        # the pointer already gives probabilities; the floor keeps log finite where no reference has the colour
        # (gather rather than nll_loss: nll_loss2d's CPU backward rejects this layout)
        loss = -probs.clamp_min(1e-8).log().gather(1, target[:, None]).mean()
        accuracy = (probs.argmax(1) == target).float().mean()
        return Output(loss=loss, logs={"loss": loss.detach(), "color_accuracy": accuracy.detach()})
