"""CPC on raw speech: van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018,
and the "modified CPC" of Rivière et al., "Unsupervised pretraining transfers well across languages", 2020.

Follows `facebookresearch/CPC_audio` (`cpc/criterion/criterion.py` `CPCUnsupersivedCriterion`,
`PredictionNetwork`, `sampleClean`), REFERENCE.md §1.18:
- z = g_enc(x) (one latent per 160 samples), c = g_ar(z) (`mmssl.models.cpc_audio.CPCAudioEncoder`);
- with T latents and K = 12 steps only the first W = T - K contexts predict: step k scores c_t against
  z_{t+k} (the positive) and M = 128 negatives per position, with score `(W_k c_t . z).mean(dim)` (CPC_audio: a
  mean over the channels) or the paper's `z^T W_k c_t` (a sum: logits D times larger for the same weights, which
  shortens the start of short runs, where tiny logits leave the loss flat for hundreds of steps). W_k is one
  bias-free linear map per step (the paper) or a one-layer causal transformer per step (the CPC2 variant,
  `rnnMode=transformer`);
- negatives are drawn once per batch and shared by the K steps: a uniform row of the batch and a time index
  (t + r) mod T with r uniform in [1, T), so a negative is never the latent at the same time in its own row
  ("batch", `sampleClean`); "sequence" draws the row as the position's own one (same utterance, so same
  speaker). With `StreamLoader(plan=pipelines.speakers.SameSpeaker())` every batch is one speaker, so "batch" negatives are
  CPC_audio's `samplingType=samespeaker`;
- the loss is cross-entropy with the positive at index 0, averaged over the B x W positions and summed over the K
  steps; the fraction of positions whose positive scores highest is logged per step (the paper's figure 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.methods.output import Output
from mmssl.models.cpc_audio import CPCAudioEncoder

__all__ = ["CPCSpeech", "cpc_info_nce", "draw_negatives"]


def draw_negatives(z: Tensor, *, count: int, window: int, same_row: bool = False,
                   generator: torch.Generator | None = None) -> Tensor:
    """Negatives (B, count, window, D) from latents z (B, T, D), as CPC_audio's `sampleClean`.

    Position (b, t) takes rows uniform over the batch (or b itself when `same_row`) and time indices
    (t + r) mod T with r uniform in [1, T). The result is a view whose memory is (B, window, count, D), the
    layout the scores' batched matmul reads without a copy.
    """
    b, t, d = z.shape
    shape = (b, window, count)
    if same_row:
        rows = torch.arange(b, device=z.device)[:, None, None].expand(shape)
    else:
        rows = torch.randint(0, b, shape, device=z.device, generator=generator)
    shift = torch.randint(1, t, shape, device=z.device, generator=generator)
    times = torch.remainder(torch.arange(window, device=z.device)[None, :, None] + shift, t)  # (B, W, count)
    flat = z.reshape(b * t, d)  # (B, T, D) -> (B*T, D)
    return flat[rows * t + times].permute(0, 2, 1, 3)  # (B, W, count, D) -> (B, count, W, D), a view


def cpc_info_nce(pred: Tensor, positive: Tensor, negatives: Tensor, *,
                 score: str = "mean") -> tuple[Tensor, Tensor]:
    """InfoNCE of one prediction step with the positive at index 0.

    Args:
        pred: predictions W_k c_t (B, W, D).
        positive: the true latents z_{t+k} (B, W, D).
        negatives: (B, M, W, D).
        score: "mean" over the D channels (CPC_audio) or the plain "dot" product z^T W_k c_t (the paper).

    Returns:
        The mean over the B x W positions of `-log softmax(s)[0]` where `s = [f(pred, pos), f(pred, neg_1), ...]`
        with f the score, and the fraction of positions where the positive scores highest.
    """
    if score not in ("mean", "dot"):
        raise ValueError(f"score must be 'mean' or 'dot', got {score!r}")
    pos = (pred * positive).sum(dim=-1, keepdim=True)  # (B, W, 1)
    neg = torch.einsum("bwd,bmwd->bwm", pred, negatives)  # (B, W, M)
    logits = torch.cat([pos, neg], dim=-1).flatten(0, 1)  # (B, W, 1+M) -> (B*W, 1+M): the positive first
    if score == "mean":
        logits = logits / pred.shape[-1]
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    loss = F.cross_entropy(logits.float(), labels)
    acc = (logits.argmax(dim=1) == 0).float().mean()
    return loss, acc


class _CausalTransformer(nn.Module):
    """One pre-norm transformer layer over c with a causal mask, then a projection to the latent width."""

    def __init__(self, dim: int, out_dim: int, *, heads: int) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True,
                                                norm_first=True)
        self.out = nn.Linear(dim, out_dim, bias=False) if out_dim != dim else nn.Identity()

    def forward(self, c: Tensor) -> Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(c.shape[1], device=c.device, dtype=c.dtype)
        return self.out(self.layer(c, src_mask=mask, is_causal=True))


class CPCSpeech(nn.Module):
    """Contrastive predictive coding on raw waveform windows (`batch["waveform"]`, (B, N) at 16 kHz).

    Args:
        encoder: a `CPCAudioEncoder` (conv g_enc + recurrent g_ar).
        predict_steps: K, future latents predicted from each context (12).
        negatives: M, negatives per position (128).
        predictor: "linear" (one W_k per step, the paper) or "transformer" (CPC2).
        negatives_from: "batch" (uniform over the batch) or "sequence" (the position's own window).
        heads: attention heads of the transformer predictor.
        score: "mean" (CPC_audio, the channel mean of W_k c_t * z) or "dot" (the paper, z^T W_k c_t).
    """

    modalities = ("audio",)

    def __init__(self, encoder: CPCAudioEncoder, *, predict_steps: int = 12, negatives: int = 128,
                 predictor: str = "linear", negatives_from: str = "batch", heads: int = 8,
                 score: str = "mean") -> None:
        super().__init__()
        if predictor not in ("linear", "transformer"):
            raise ValueError(f"predictor must be 'linear' or 'transformer', got {predictor!r}")
        if negatives_from not in ("batch", "sequence"):
            raise ValueError(f"negatives_from must be 'batch' or 'sequence', got {negatives_from!r}")
        if score not in ("mean", "dot"):
            raise ValueError(f"score must be 'mean' or 'dot', got {score!r}")
        self.encoder = encoder
        self.predict_steps, self.negatives, self.negatives_from = predict_steps, negatives, negatives_from
        self.score = score
        h, d = encoder.context_dim, encoder.dim
        if predictor == "linear":
            self.predictors = nn.ModuleList(nn.Linear(h, d, bias=False) for _ in range(predict_steps))
        else:
            self.predictors = nn.ModuleList(_CausalTransformer(h, d, heads=heads) for _ in range(predict_steps))

    def losses(self, z: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """Per-step InfoNCE losses (K,) and accuracies (K,) of latents z (B, T, D) and contexts c (B, T, H)."""
        k_max = self.predict_steps
        t = z.shape[1]
        window = t - k_max
        if window < 1:
            raise ValueError(f"{t} latents leave no context for {k_max} prediction steps; use longer windows")
        ctx = c[:, :window]  # (B, W, H): contexts that still have K future latents
        negs = draw_negatives(z, count=self.negatives, window=window, same_row=self.negatives_from == "sequence")
        losses, accs = [], []
        for k, predictor in enumerate(self.predictors, start=1):
            loss, acc = cpc_info_nce(predictor(ctx), z[:, k:k + window], negs, score=self.score)
            losses.append(loss)
            accs.append(acc)
        return torch.stack(losses), torch.stack(accs)

    def forward(self, batch: dict) -> Output:
        if "waveform" not in batch:
            raise KeyError("CPC reads raw windows from batch['waveform']: use DeviceStage(mode='waveform')")
        z, c = self.encoder(batch["waveform"])
        losses, accs = self.losses(z, c)
        loss = losses.sum()  # CPC_audio sums the K steps' losses
        logs = {"loss": loss.detach(), "acc": accs.mean().detach()}
        for k, acc in enumerate(accs, start=1):
            logs[f"acc_step{k}"] = acc.detach()
        return Output(loss=loss, logs=logs)
