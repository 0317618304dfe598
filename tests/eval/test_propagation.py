"""Propagation: recovers masks from exact features, equals a brute-force computation, stays frame by frame."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmssl.eval.labels import grid_to_mask, mask_to_grid
from mmssl.eval.metrics import region_iou
from mmssl.eval.presets import PropagationSettings, apply_settings, preset
from mmssl.eval.propagation import propagate


def moving_labels(frames: int, h: int, w: int) -> list[np.ndarray]:
    """Label ids (h, w) per frame: two discs drifting in opposite directions over background 0."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for t in range(frames):
        lab = np.zeros((h, w), dtype=np.int64)
        lab[(xx - (10 + 0.7 * t)) ** 2 + (yy - 12) ** 2 <= 36] = 1
        lab[(xx - (30 - 0.7 * t)) ** 2 + (yy - 20) ** 2 <= 25] = 2
        out.append(lab)
    return out


@pytest.mark.parametrize("name", ["crw", "dino", "siammae"])
def test_exact_features_recover_masks(name: str) -> None:
    labels = moving_labels(12, 32, 40)
    g = torch.Generator().manual_seed(1)
    # features: one-hot of the true label (3 dims) plus noise in those and 13 more dims
    feats = [torch.cat([F.one_hot(torch.from_numpy(lab), 3).permute(2, 0, 1).float(), torch.zeros(13, 32, 40)])
             + 0.15 * torch.randn(16, 32, 40, generator=g) for lab in labels]
    settings = preset(name, "davis")
    first = mask_to_grid(labels[0], [0, 1, 2], (32, 40))
    for t, soft in enumerate(propagate(iter(feats), first, settings), start=1):
        pred = grid_to_mask(soft, (32, 40), settings.norm_mask).numpy()
        for obj in (1, 2):
            # features carry the label itself (noise 0.15): measured IoU 1.0 at every frame for every preset; 0.95
            # leaves a few boundary cells of discs of ~80-110 cells
            assert region_iou(labels[t] == obj, pred == obj) > 0.95, (name, t, obj)


def brute_force(feats: list[torch.Tensor], first: torch.Tensor, s: PropagationSettings) -> list[torch.Tensor]:
    """The definition, written plainly in float64: every target cell against every context cell."""
    d, h, w = feats[0].shape
    f = [F.normalize(x.double(), dim=0).reshape(d, -1).T for x in feats]  # (h*w, D) per frame
    yy, xx = np.mgrid[0:h, 0:w]
    yx = np.stack([yy.ravel(), xx.ravel()], 1)
    diff = yx[:, None, :] - yx[None, :, :]  # (q, k, 2)
    if s.window == "disk":
        near = (diff ** 2).sum(-1) < s.radius ** 2
    else:
        near = np.abs(diff).max(-1) <= s.radius
    near = torch.from_numpy(near)
    labels = {0: first.double().reshape(first.shape[0], -1).T}  # frame -> (h*w, C)
    outs = []
    for t in range(1, len(feats)):
        if s.pad_first:
            previous = [max(j, 0) for j in range(t - s.context, t)]
        else:
            previous = list(range(max(1, t - s.context), t))
        ctx = [(0, not s.restrict_first)] + [(j, False) for j in previous]
        affs, labs = [], []
        for j, whole in ctx:
            a = f[t] @ f[j].T  # (q, k)
            if not whole:
                a = a.masked_fill(~near, float("-inf"))
            affs.append(a)
            labs.append(labels[j])
        a, lab = torch.cat(affs, 1), torch.cat(labs, 0)
        top, idx = a.topk(s.topk, dim=1)
        weights = torch.softmax(top / s.temperature, dim=1)
        pred = (weights[..., None] * lab[idx]).sum(1)  # (q, C)
        labels[t] = pred
        outs.append(pred.T.reshape(-1, h, w))
    return outs


@pytest.mark.parametrize("changes", [
    dict(window="disk", radius=2.5, restrict_first=False, pad_first=True, context=2, topk=4, tile=3),  # CRW-like
    dict(window="square", radius=1.0, restrict_first=True, pad_first=False, context=3, topk=5, tile=2),  # DINO-like
    dict(window="disk", radius=2.0, restrict_first=True, pad_first=True, context=1, topk=3, tile=4),
])
def test_radius_restricted_equals_brute_force(changes: dict) -> None:
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(5, 6, 7, generator=g) for _ in range(7)]
    first = torch.softmax(torch.randn(3, 6, 7, generator=g), 0)
    s = PropagationSettings(temperature=0.3, **changes)
    ours = list(propagate(iter(feats), first, s))
    ref = brute_force(feats, first, s)
    assert len(ours) == len(ref) == 6
    for a, b in zip(ours, ref):
        # float32 cosines over 5 dims and a softmax at temperature 0.3 against float64: measured 1e-7, 0.002 of
        # this bound; a wrong neighbourhood or context frame is off by O(0.1)
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-4)


def test_reads_one_frame_at_a_time() -> None:
    pulled = []

    def frames():
        for t in range(6):
            pulled.append(t)
            yield torch.randn(4, 5, 5)

    stream = propagate(frames(), torch.rand(2, 5, 5), PropagationSettings(context=2, tile=2))
    for k, _ in enumerate(stream, start=1):
        assert len(pulled) == k + 1  # the first frame plus k targets, never the whole video


def test_settings_overrides_name_the_bad_key() -> None:
    s = apply_settings(preset("dino", "davis"), ["topk=3", "size=[240, 320]", "radius=none"])
    assert s.topk == 3 and s.size == (240, 320) and s.radius is None
    with pytest.raises(ValueError, match="unknown propagation setting 'topkk'"):
        apply_settings(s, ["topkk=3"])
    with pytest.raises(ValueError, match="window"):
        dataclasses.replace(s, window="circle")


def test_keypoints_follow_exact_features() -> None:
    """Heat maps carried by features that move with the object land on the moved joints (PCK@0.1 high)."""
    from mmssl.eval.labels import grid_to_keypoints, keypoints_to_grid
    from mmssl.eval.metrics import pck

    h, w, stride, frames = 24, 32, 8, 8
    g = torch.Generator().manual_seed(0)
    texture = F.normalize(torch.randn(16, h, w + frames, generator=g), dim=0)  # a pattern that slides right
    feats = [texture[:, :, frames - t:frames - t + w] for t in range(frames)]  # cell x at time t shows x - t
    joints = np.array([[60.0, 50.0], [100.0, 90.0], [140.0, 60.0], [80.0, 130.0]])  # (x, y) pixels at t = 0
    truth = [joints + [stride * t, 0] for t in range(frames)]  # one cell (8 px) to the right per frame
    first = keypoints_to_grid(joints, (h * stride, w * stride), (h, w), sigma=0.5)
    preds = [grid_to_keypoints(soft, (h * stride, w * stride), topk=3)
             for soft in propagate(iter(feats), first, preset("crw", "jhmdb"))]
    score = pck(np.stack(preds), np.stack(truth[1:]), (0.1,))
    assert score["PCK@0.1"] > 90, score


def test_encoder_sizes_of_the_presets() -> None:
    from mmssl.eval.labels import encoder_size

    assert encoder_size(480, 854, preset("dino", "davis"), 16) == (480, 832)  # long side to a multiple of 64
    assert encoder_size(480, 854, preset("crw", "davis"), 8) == (480, 848)  # full 480p, whole cells
    assert encoder_size(480, 854, preset("siammae", "davis"), 16) == (480, 880)
    assert encoder_size(240, 320, preset("crw", "jhmdb"), 8) == (320, 424)  # short side 320
    assert encoder_size(320, 240, preset("crw", "jhmdb"), 8) == (424, 320)
