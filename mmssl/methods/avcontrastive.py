"""Audio-visual contrastive learning, CLIP-style: a clip's frames and its own soundtrack are a positive pair.

A video-clip encoder and a spectrogram encoder embed the same clip's frames and audio track; linear projections
map both into one space, and a symmetric InfoNCE over the batch (gathered from every rank, with gradients) pulls
each clip towards its own sound and away from the others', and each sound towards its own clip. The recipe is
CLIP's (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021,
`openai/CLIP` `model.py`): bias-free projections, L2-normalised embeddings, a learned temperature kept as a log
logit scale initialised to log(1/0.07) and clipped at 100, loss = (CE(video->audio) + CE(audio->video)) / 2.
The pairing of a clip with its own audio follows the audio-visual correspondence line of work (Arandjelovic &
Zisserman, "Look, Listen and Learn", ICCV 2017; Morgado et al., "Audio-Visual Instance Discrimination", CVPR 2021).

The data side: `decode_clips(..., audio=True)` in the workers and `DeviceStage(mode="video")`, which puts the clip
Tokens in `batch["video"]` and the spectrogram of the audio under that clip in `batch["audio"]`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.losses import embedding_std, info_nce
from mmssl.methods.output import Output
from mmssl.train.distributed import all_gather_with_grad, rank

__all__ = ["AVContrastive"]


class AVContrastive(nn.Module):
    """Symmetric InfoNCE between a video encoder and an audio encoder, with a learned temperature.

    Args:
        encoder: the video-clip `TokenEncoder` (kept as `encoder`, what evaluation and export read).
        audio_encoder: the spectrogram `TokenEncoder`.
        dim: width of the shared embedding space.
        temperature: initial temperature (CLIP: 0.07); learned as log(1 / T).
        max_scale: upper clip of the logit scale 1 / T (CLIP: 100), against instability.
        learn_temperature: False keeps T fixed.
    """

    modalities = ("video",)

    def __init__(self, encoder: nn.Module, audio_encoder: nn.Module, *, dim: int = 256, temperature: float = 0.07,
                 max_scale: float = 100.0, learn_temperature: bool = True) -> None:
        super().__init__()
        self.encoder, self.audio_encoder = encoder, audio_encoder
        self.video_proj = nn.Linear(encoder.dim, dim, bias=False)
        self.audio_proj = nn.Linear(audio_encoder.dim, dim, bias=False)
        nn.init.normal_(self.video_proj.weight, std=encoder.dim ** -0.5)  # CLIP's projection init
        nn.init.normal_(self.audio_proj.weight, std=audio_encoder.dim ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)), requires_grad=learn_temperature)
        self.max_log_scale = math.log(max_scale)

    def embed(self, batch: dict) -> tuple[Tensor, Tensor]:
        """L2-normalised video and audio embeddings (n, dim) of the batch's clips."""
        names = (self.encoder.modality.name, self.audio_encoder.modality.name)
        missing = [name for name in names if name not in batch]
        if missing:
            raise KeyError(f"AVContrastive needs batch[{missing[0]!r}]: decode clips with `audio=True` and use "
                           f"DeviceStage(mode='video'); the batch has keys {sorted(batch)}")
        v = F.normalize(self.video_proj(self.encoder(batch[names[0]]).pooled), dim=-1)
        a = F.normalize(self.audio_proj(self.audio_encoder(batch[names[1]]).pooled), dim=-1)
        return v, a

    def temperature(self) -> Tensor:
        """The current temperature T = 1 / exp(clipped log scale)."""
        return self.logit_scale.clamp(max=self.max_log_scale).exp().reciprocal()

    def forward(self, batch: dict) -> Output:
        v, a = self.embed(batch)
        n = v.shape[0]
        v_all, a_all = all_gather_with_grad(v), all_gather_with_grad(a)  # (n * world, dim)
        t = self.temperature()
        offset = rank() * n
        loss = (info_nce(v, a_all, temperature=t, offset=offset) + info_nce(a, v_all, temperature=t, offset=offset)) / 2
        with torch.no_grad():
            own = offset + torch.arange(n, device=v.device)
            v2a = ((v @ a_all.T).argmax(1) == own).float().mean()  # the clip finds its own sound
        return Output(loss=loss, logs={"loss": loss.detach(), "temperature": t.detach(),
                                       "embedding_std_video": embedding_std(v), "embedding_std_audio": embedding_std(a),
                                       "retrieval_v2a": v2a})
