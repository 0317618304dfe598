"""Audio-visual contrastive: symmetric InfoNCE with a learned temperature written out, the batch contract,
and a learning test where a clip must retrieve its own soundtrack among held-out pairs."""

import math

import pytest
import torch
import torch.nn.functional as F
from learning import tiny_encoder, tiny_spec
from synthetic import NUM_SHAPES, shape_masks

from mmssl.methods.avcontrastive import AVContrastive

VIDEO = tiny_spec("video", patch=(2, 8, 8), size=(4, 32, 32))
AUDIO = tiny_spec("audio", patch=(4, 4), size=(32, 16))


def _method(**kwargs) -> AVContrastive:
    return AVContrastive(tiny_encoder(VIDEO, depth=1, dim=32, cls_token=False),
                         tiny_encoder(AUDIO, depth=1, dim=24), **{"dim": 16, **kwargs})


def _batch(b: int = 5) -> dict:
    return {"video": VIDEO.tokenize(torch.randn(b, 3, 4, 32, 32)), "audio": AUDIO.tokenize(torch.randn(b, 1, 32, 16))}


def test_loss_is_symmetric_infonce_with_the_learned_temperature() -> None:
    method = _method(temperature=0.1)
    batch = _batch()
    out = method(batch)
    with torch.no_grad():
        v, a = method.embed(batch)
    t = 0.1
    total = 0.0
    for i in range(5):  # CLIP: (CE over audio for each clip + CE over clips for each sound) / 2
        va = [math.exp(float(v[i] @ a[j]) / t) for j in range(5)]
        av = [math.exp(float(a[i] @ v[j]) / t) for j in range(5)]
        total += -math.log(va[i] / sum(va)) - math.log(av[i] / sum(av))
    # float32 loss ~2 against float64 of float32 dot products / 0.1: ~1e-7 relative (measured 5.5e-8); the
    # temperature is exp(-log-scale) in float32, 1.5e-8 off
    assert math.isclose(float(out.loss.detach()), total / 10, rel_tol=1e-4)
    assert math.isclose(float(out.logs["temperature"]), 0.1, rel_tol=1e-6)
    out.loss.backward()
    assert method.logit_scale.grad is not None and method.logit_scale.grad != 0
    assert method.audio_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert method.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert {"embedding_std_video", "embedding_std_audio", "retrieval_v2a"} <= set(out.logs)


def test_temperature_is_clipped_and_can_be_fixed() -> None:
    method = _method()
    # CLIP's initial value; float32 exp/log round trips: 4e-9 and 1.2e-7 relative (measured), an ulp or two
    assert math.isclose(float(method.temperature().detach()), 0.07, rel_tol=1e-6)
    with torch.no_grad():
        method.logit_scale.fill_(10.0)
    assert math.isclose(float(method.temperature().detach()), 0.01, rel_tol=1e-6)  # scale clipped at 100
    assert not _method(learn_temperature=False).logit_scale.requires_grad


def test_needs_the_clips_soundtrack() -> None:
    with pytest.raises(KeyError, match="audio=True"):
        _method()({"video": _batch()["video"]})


def av_pairs(n: int, *, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips (n, 3, 4, 32, 32) and their soundtracks (n, 1, 32, 16) made from shared hidden causes.

    A shape of class c, size s and height h slides sideways; its sound is tone pattern c (steady, rising,
    falling, beeping) at a pitch set by s and starting at a time set by h. Colours, the direction of motion,
    loudness and the noise are independent nuisances, so only c, s and h tie a clip to its own sound.
    """
    c = torch.randint(0, NUM_SHAPES, (n,), generator=generator)
    s, h = torch.rand(n, generator=generator), torch.rand(n, generator=generator)
    radii = 32 * (0.14 + 0.14 * s)
    y = radii + h * (32 - 2 * radii)
    step = torch.where(torch.rand(n, generator=generator) < 0.5, -2.0, 2.0)
    x0 = 16 - 1.5 * step
    fg = torch.rand(n, 3, 1, 1, generator=generator) * 0.5 + 0.5
    bg = torch.rand(n, 3, 1, 1, generator=generator) * 0.4
    frames = [bg + (fg - bg) * shape_masks(c, torch.stack([y, x0 + t * step], 1), radii, 32).unsqueeze(1)
              for t in range(4)]
    video = torch.stack(frames, dim=2)  # (n, 3, T, 32, 32)
    t = torch.arange(32.0).reshape(1, -1, 1)  # (1, T, 1)
    f = torch.arange(16.0).reshape(1, 1, -1)  # (1, 1, F)
    onset = (2 + 14 * h).reshape(-1, 1, 1)
    slope = torch.tensor([0.0, 0.25, -0.25, 0.0])[c].reshape(-1, 1, 1)
    pitch = (2 + 8 * s).reshape(-1, 1, 1) + slope * (t - onset).clamp(min=0)  # (n, T, 1)
    gate = (t >= onset).float() * torch.where((c == 3).reshape(-1, 1, 1), ((t - onset) % 6 < 3).float(), 1.0)
    tone = (-((f - pitch) ** 2) / 1.0).exp() + 0.5 * (-((f - 2 * pitch) ** 2) / 1.0).exp()  # (n, T, F)
    loud = 0.7 + 0.6 * torch.rand(n, 1, 1, generator=generator)
    spec = loud * gate * tone + 0.05 * torch.rand(n, 32, 16, generator=generator)
    audio = (spec + 1e-2).log().unsqueeze(1)  # (n, 1, T, F)
    return (video + 0.02 * torch.randn(video.shape, generator=generator)).clamp(0, 1), audio


@torch.no_grad()
def _recall(method: AVContrastive, video: torch.Tensor, audio: torch.Tensor, k: int) -> float:
    """% of held-out clips whose own soundtrack is among the k nearest of all held-out soundtracks."""
    method.eval()
    v, a = method.embed({"video": VIDEO.tokenize(VIDEO.normalize(video)), "audio": AUDIO.tokenize(audio)})
    top = (v @ a.T).topk(k, dim=1).indices  # (n, k)
    return 100.0 * float((top == torch.arange(len(v)).unsqueeze(1)).any(1).float().mean())


@pytest.mark.slow
def test_a_clip_retrieves_its_own_sound() -> None:
    import copy

    from twoviews import one_thread, train

    with one_thread():
        torch.manual_seed(0)
        video, audio = av_pairs(1280, generator=torch.Generator().manual_seed(0))
        audio = (audio - audio.mean()) / audio.std()
        method = AVContrastive(tiny_encoder(VIDEO, depth=2, dim=64, cls_token=False),
                               tiny_encoder(AUDIO, depth=2, dim=64, cls_token=False), dim=64)
        random_init = copy.deepcopy(method)
        train_v, train_a = VIDEO.normalize(video[:1024]), audio[:1024]

        def batch(index):
            return {"video": VIDEO.tokenize(train_v[index]), "audio": AUDIO.tokenize(train_a[index])}

        first, last, secs, _ = train(method, batch, 1024, steps=150, lr=2e-3, batch_size=64)
        held = video[1024:], audio[1024:]
        trained = {k: _recall(method, *held, k) for k in (1, 10)}
        rand = {k: _recall(random_init, *held, k) for k in (1, 10)}
    chance = {k: 100.0 * k / 256 for k in (1, 10)}
    print(f"\nAV contrastive: loss {first:.3f} -> {last:.3f} ({secs:.1f}s); held-out clip->sound among 256: "
          f"R@1 trained {trained[1]:.1f}% vs random init {rand[1]:.1f}% (chance {chance[1]:.1f}%), "
          f"R@10 trained {trained[10]:.1f}% vs random init {rand[10]:.1f}% (chance {chance[10]:.1f}%); "
          f"temperature {float(method.temperature().detach()):.3f}")
    # README's short run: R@10 22.7 % vs 3.1 % at random init (chance 3.9 %): 5.8x chance and 19.6 points over
    # random init, against bounds of 3x and 10 points; R@1 is printed (not re-measured with these comments)
    assert last < first - 1.0
    assert trained[1] > 4 * chance[1] and trained[1] > rand[1] + 1.0
    assert trained[10] > 3 * chance[10] and trained[10] > rand[10] + 10.0
