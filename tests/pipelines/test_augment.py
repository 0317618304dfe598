"""Batched augmentation: parameters keyed by (seed, epoch, key, view), same results in any batch or worker."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from pipelines import colour
from pipelines.augment import Augment, Crop, crop_box, crop_images, pack, resized_crop, resized_crop_uint8

STRONG = Augment(crop=Crop(size=32, scale=(0.2, 1.0)), jitter=0.8, grayscale=0.2, blur=0.5, solarize=0.2,
                 blur_kernel=7)


def images(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, 40 + 3 * i, 56 - 2 * i), generator=g, dtype=torch.uint8) for i in range(n)]


def ids(n: int, epoch: int = 0) -> list[tuple[int, int, str]]:
    return [(5, epoch, f"key{i}") for i in range(n)]


def test_augment_is_identical_across_runs_and_batch_composition():
    imgs, keys = images(8), ids(8)
    full = STRONG(imgs, keys)
    assert full.shape == (8, 3, 32, 32) and 0.0 <= float(full.min()) and float(full.max()) <= 1.0
    assert torch.equal(full, STRONG(imgs, keys))
    order = [6, 1, 3]
    assert torch.equal(full[order], STRONG([imgs[i] for i in order], [keys[i] for i in order]))
    assert not torch.equal(full, STRONG(imgs, ids(8, epoch=1)))
    other = Augment(crop=Crop(size=32, scale=(0.2, 1.0), view="view1"), jitter=0.8, blur=0.5, blur_kernel=7)
    assert not torch.equal(full, other(imgs, keys))


class CropDataset(torch.utils.data.Dataset):
    """The worker stage run per index, so a DataLoader spreads samples over worker processes."""

    def __init__(self, samples):
        self.samples, self.stage = samples, crop_images(crops=[STRONG.crop])

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return next(iter(self.stage(iter([self.samples[i]]))))["image.view0"]


def test_worker_crops_match_device_crops_in_any_worker():
    imgs, keys = images(6), ids(6)
    samples = [{"__key__": k, "__seed__": s, "__epoch__": e, "image": img} for (s, e, k), img in zip(keys, imgs)]
    data = CropDataset(samples)
    local = [data[i] for i in range(len(data))]
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2,
                                         multiprocessing_context=multiprocessing.get_context("fork"))
    spread = list(loader)
    assert all(torch.equal(a, b) for a, b in zip(local, spread))
    sizes = [tuple(img.shape[-2:]) for img in imgs]
    from_workers = STRONG(torch.stack(local), keys, sizes=sizes)
    on_device = STRONG(imgs, keys)
    # only the worker's uint8 rounding differs: <= 1 level from torch's uint8 kernel, times jitter's largest gain
    # (brightness 1.4 x contrast 1.4 x saturation 1.2 = 2.35), so < 3 levels; measured 9e-5 levels here
    assert (from_workers - on_device).abs().max() < 3 / 255


def test_video_frames_share_one_crop_and_flip():
    frame = images(1)[0]
    clip = frame.expand(4, 3, *frame.shape[-2:]).unsqueeze(0).repeat(3, 1, 1, 1, 1)  # (3, T=4, 3, H, W)
    out = STRONG(clip, ids(3))
    assert out.shape == (3, 4, 3, 32, 32)
    assert all(torch.equal(out[:, 0], out[:, t]) for t in range(1, 4))
    single = STRONG([frame] * 3, ids(3))  # the same ids draw the same parameters for an image
    # the same ops on a clip's frames and on an image: measured bit-exact; 1e-6 (~17 ulps just below 1) allows only
    # another reduction order for the per-frame means of contrast and grayscale
    torch.testing.assert_close(out[:, 0], single, atol=1e-6, rtol=0)


def test_crop_box_and_flip_geometry():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = crop_box(rng, 50, 80, (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top and top + h <= 50 and 0 <= left and left + w <= 80 and h > 0 and w > 0
    assert crop_box(rng, 10, 100, (0.9, 1.0), (3 / 4, 4 / 3)) == (0, 43, 10, 13)  # fallback: centred, ratio-clamped
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    whole = Augment(crop=Crop(size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0)), flip=1.0)
    torch.testing.assert_close(whole(list(x), ids(2)), x.flip(-1))  # an identity resize and a flip: measured exact
    assert torch.equal(resized_crop(x, (1, 2, 4, 4), (4, 4)), x[:, :, 1:5, 2:6])


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation"])
def test_colour_ops_match_torchvision(op):
    x = torch.rand(3, 3, 12, 12)
    factors = torch.tensor([0.3, -0.2, 0.1])
    index = {"brightness": 0, "contrast": 1, "saturation": 2, "hue": 3}[op]
    table = torch.zeros(3, 4)
    table[:, index] = factors
    out = colour.jitter(x.clone()[:, None], torch.ones(3, dtype=torch.bool), table,
                        torch.arange(4).repeat(3, 1))[:, 0]  # (N, F=1, 3, h, w) in, the frame axis dropped
    reference = {"brightness": lambda img, f: TF.adjust_brightness(img, 1 + f),
                 "contrast": lambda img, f: TF.adjust_contrast(img, 1 + f),
                 "saturation": lambda img, f: TF.adjust_saturation(img, 1 + f)}[op]
    expected = torch.stack([reference(x[i], float(factors[i])) for i in range(3)])
    # torchvision's float32 formulas on values in [0, 1], ours in another order: a few ulps (measured 1.3e-7)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_hue_rotation_keeps_luma_and_greys():
    x = 0.25 + 0.5 * torch.rand(4, 3, 10, 10)  # away from the clamp
    grey = torch.rand(1, 1, 10, 10).expand(1, 3, 10, 10)
    batch = torch.cat([x, grey])
    hue = lambda shift: colour.jitter(batch.clone()[:, None], torch.ones(5, dtype=torch.bool),  # noqa: E731
                                      torch.tensor([[0, 0, 0, shift]] * 5), torch.tensor([[3, 0, 1, 2]] * 5))[:, 0]
    luma = lambda t: 0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]  # noqa: E731
    turned = hue(0.08)
    assert (turned[:4] - x).abs().max() > 0.01  # the shift moves colours (measured 0.30), not only rounding
    # below: float32 rotations of values in [0, 1], a few ulps each (measured <= 3e-7); 1e-5 is ~30x
    torch.testing.assert_close(luma(turned[:4]), luma(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(turned[4], batch[4], atol=1e-5, rtol=0)  # no chroma, nothing to rotate
    torch.testing.assert_close(hue(0.0), batch, atol=1e-5, rtol=0)
    torch.testing.assert_close(hue(0.08 - 1.0), turned, atol=1e-5, rtol=0)  # a full turn is the identity


def test_blur_grayscale_and_solarize():
    x = torch.rand(4, 3, 16, 16)
    params = [{"box": (0, 0, 16, 16), "flip": False, "jitter": False, "gray": i == 0, "blur": i == 1,
               "solarize": i == 2, "sigma": 1.5, "factors": np.zeros(4), "order": np.arange(4)} for i in range(4)]
    out = Augment(crop=Crop(size=16), grayscale=0.5, blur=0.5, solarize=0.5, blur_kernel=9).apply(x.clone(),
                                                                                                   pack(params))
    gray = 0.2989 * x[0, 0] + 0.587 * x[0, 1] + 0.114 * x[0, 2]
    # grayscale and solarize are the same float32 formula (measured exact, default float32 tolerances); the blur is
    # a 9-tap float32 convolution per axis in another order than torchvision's: a few ulps (measured 3e-7)
    torch.testing.assert_close(out[0], gray.expand(3, 16, 16))
    torch.testing.assert_close(out[1], TF.gaussian_blur(x[1], [9, 9], [1.5, 1.5]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[2], torch.where(x[2] >= 0.5, 1 - x[2], x[2]))
    assert torch.equal(out[3], x[3])


def test_uint8_resized_crop_is_within_one_level_of_the_float_route():
    x = torch.randint(0, 256, (5, 3, 40, 50), dtype=torch.uint8)
    box, size = (3, 4, 30, 37), (24, 24)
    fast = resized_crop_uint8(x, box, size)
    slow = resized_crop(x, box, size).round().clamp(0, 255)
    assert fast.dtype == torch.uint8 and fast.shape == (5, 3, 24, 24)
    assert (fast.float() - slow).abs().max() <= 1  # torch's uint8 kernel rounds after each axis: one level at most


def test_flip_only_views_keep_uint8_and_flip_like_the_float_path():
    aug = Augment(crop=Crop(size=8), flip=0.5)
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    ids, sizes = [(0, 0, f"k{i}") for i in range(6)], [(8, 8)] * 6
    raw = aug(x, ids, sizes=sizes, raw=True)
    assert raw.dtype == torch.uint8 and torch.equal(x, x.clone())  # the input is not modified
    assert torch.allclose(raw.float() / 255, aug(x, ids, sizes=sizes))  # the same division by 255: measured exact
    unflipped = aug(x, ids, sizes=sizes, raw=True, flipped=True)
    assert torch.equal(unflipped, x)  # flips already applied upstream are not applied again
    assert not Augment(jitter=0.8).flip_only and aug.flip_only


def test_dense_gates_of_the_gpu_route_equal_the_indexed_cpu_route():
    """On a GPU every row is computed and `torch.where` selects (no host read of the gates); on a CPU only the
    gated rows are computed. Both must give the same views, frames of a clip sharing their sample's draw."""
    x = torch.rand(6, 2, 3, 16, 20)  # (N, T, 3, h, w)
    aug = Augment(crop=Crop(size=(16, 20)), jitter=0.8, grayscale=0.3, blur=0.5, solarize=0.3, blur_kernel=7)
    draws = aug.draws(ids(6), [(16, 20)] * 6)
    assert 0 < int(draws["jitter"].sum()) < 6 and 0 < int(draws["blur"].sum()) < 6  # both branches are taken
    indexed = aug.apply(x.clone(), draws)
    with colour.dense_gates():
        dense = aug.apply(x.clone(), draws)
    # the same ops on all rows or on the gated ones: measured bit-exact; 1e-6 (~17 ulps just below 1) allows only
    # another reduction order for batched means
    torch.testing.assert_close(dense, indexed, atol=1e-6, rtol=0)
    assert not torch.equal(indexed, x)
