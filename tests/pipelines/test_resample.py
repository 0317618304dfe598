"""Batched resized crops: parity with per-sample antialiased `F.interpolate`, padded batches, and no host syncs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmssl.train.syncs import count_host_syncs
from pipelines.resample import _crop_pass, _ieee_fp32, axis_weights, ints_to_device, resized_crops, stack_padded

H, W = 37, 53
# (top, left, h, w) in an H x W image: down- and upscaling, boxes on every border, 1-pixel strips, the whole image
BOXES = [(2, 3, 30, 40), (5, 7, 9, 11), (0, 0, H, 4), (0, 50, H, 3), (H - 1, 0, 1, W), (10, W - 1, 20, 1),
         (0, 0, H, W), (20, 30, 2, 2), (4, 0, 1, 1), (H - 5, W - 6, 5, 6)]
SIZES = [(16, 16), (7, 29), (29, 7), (40, 64)]


def reference(x: torch.Tensor, boxes: list[tuple[int, int, int, int]], size: tuple[int, int]) -> torch.Tensor:
    """What the device stage does today: cut each box and resize it with its own `F.interpolate` call."""
    outs = []
    for b, (top, left, h, w) in enumerate(boxes):
        part = x[b, ..., top:top + h, left:left + w].float()
        flat = part.reshape(-1, part.shape[-3], h, w)  # (T or 1, C, h, w)
        out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=True)
        outs.append(out.reshape(*part.shape[:-2], *size))  # ([T,] C, size)
    return torch.stack(outs)


def pil_weights(in_len: int, out_len: int, start: int, length: int) -> torch.Tensor:
    """The antialiased bilinear weights written out per output pixel, as Pillow's resampler defines them."""
    scale = length / out_len
    support = max(scale, 1.0)
    rows = torch.zeros(out_len, in_len, dtype=torch.float64)
    for i in range(out_len):
        centre = (i + 0.5) * scale
        for j in range(length):
            rows[i, start + j] = max(0.0, 1.0 - abs(j + 0.5 - centre) / support)
        rows[i] /= rows[i].sum()
    return rows


def test_axis_weights_equal_the_written_out_filter_and_interpolate_of_deltas():
    g = torch.Generator().manual_seed(0)
    cases = [(60, 7, 0, 60), (9, 40, 2, 5), (30, 30, 3, 27), (25, 4, 24, 1), (400, 3, 10, 390), (12, 96, 0, 1)]
    lengths = torch.randint(1, 50, (6,), generator=g).tolist()
    cases += [(L, int(torch.randint(1, 50, (), generator=g)), 0, L) for L in lengths]
    for in_len, out_len, start, length in cases:
        ours = axis_weights(in_len, out_len, torch.tensor([start, 0]), torch.tensor([length, in_len]))
        assert ours.shape == (2, out_len, in_len)
        # float32 weights <= 1 against float64 ones: half an ulp is 6e-8 (measured 4.4e-8 for both checks)
        assert torch.allclose(ours[0].double(), pil_weights(in_len, out_len, start, length), atol=1e-6)
        # a stack of one-hot rows through torch's kernel gives its weight matrix column by column; in float64,
        # since torch's float32 weights are themselves ~1e-5 off far from the origin (width 2: torch's float
        # antialias kernel mishandles an axis resized from 1 to 1 pixel)
        deltas = torch.eye(in_len, dtype=torch.float64).reshape(1, in_len, in_len, 1).expand(1, in_len, in_len, 2)
        cols = F.interpolate(deltas, size=(out_len, 2), mode="bilinear", align_corners=False, antialias=True)
        assert torch.allclose(ours[1].double(), cols[0, :, :, 0].T, atol=1e-6)  # cols (1, in, out, 2)


@pytest.mark.parametrize("shape", [(H, W), (W, H)])  # wide and tall: both orders of the two products
def test_float_crops_equal_per_sample_interpolate(shape):
    boxes = BOXES if shape == (H, W) else [(left, top, w, h) for top, left, h, w in BOXES]
    x = torch.rand(len(boxes), 3, *shape, generator=torch.Generator().manual_seed(1))
    for size in SIZES:
        ours = resized_crops(x, torch.tensor(boxes), size)
        assert ours.shape == (len(boxes), 3, *size) and ours.dtype == torch.float32
        # both float32 on [0, 1] values: ours is ~1.5e-7 from a float64 resize, torch's float32 kernel ~1.8e-6
        # (measured); 1e-4 leaves room for torch's float32 weights, ~1e-5 off far from the origin on long axes
        assert (ours - reference(x, boxes, size)).abs().max() < 1e-4, size


def test_large_ratios_and_both_product_orders_agree():
    x = torch.rand(3, 2, 400, 9, generator=torch.Generator().manual_seed(2))
    boxes = [(0, 0, 400, 9), (13, 4, 380, 1), (399, 8, 1, 1)]
    for size in [(5, 70), (3, 2), (120, 18)]:
        ours = resized_crops(x, torch.tensor(boxes), size)
        # as above, on a 400-pixel axis: measured 4.6e-6 (torch's float32 weights; ours is 1.9e-7 from float64)
        assert (ours - reference(x, boxes, size)).abs().max() < 1e-4, size
    top, left, h, w = torch.tensor(boxes).unbind(1)
    wy, wx = axis_weights(400, 20, top, h), axis_weights(9, 30, left, w)
    # the same two float32 weighted sums in the other order: a few ulps of values <= 1 (measured 2.4e-7)
    assert torch.allclose(_crop_pass(x, wy, wx, True), _crop_pass(x, wy, wx, False), atol=1e-5)


def test_uint8_inputs_keep_the_0_255_scale_and_round_to_torch_uint8():
    x = torch.randint(0, 256, (len(BOXES), 3, H, W), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    for size in SIZES[:2]:
        ours = resized_crops(x, torch.tensor(BOXES), size)
        # the float route, on the 0..255 scale (an ulp at 255 is 1.5e-5): measured 1.8e-4, nearly all of it torch's
        # float32 kernel (1.9e-4 from a float64 resize; ours 3.6e-5), so 1e-3 is ~5x over torch's own error
        assert (ours - reference(x, BOXES, size)).abs().max() < 1e-3
        rounded = resized_crops(x, torch.tensor(BOXES), size, out_dtype=torch.uint8)
        assert rounded.dtype == torch.uint8 and torch.equal(rounded, ours.round().clamp(0, 255).to(torch.uint8))
        # torch's own uint8 kernel rounds after each axis (fixed-point weights): one grey level at most apart
        native = torch.stack([F.interpolate(x[b:b + 1, :, t:t + h, l:l + w], size=size, mode="bilinear",
                                            align_corners=False, antialias=True)[0]
                              for b, (t, l, h, w) in enumerate(BOXES)])
        assert (rounded.int() - native.int()).abs().max() <= 1


def test_video_clips_share_their_box_and_channel_last_frames_match():
    g = torch.Generator().manual_seed(4)
    clips = torch.randint(0, 256, (4, 5, 3, 30, 44), dtype=torch.uint8, generator=g)  # (B, T, C, H, W)
    boxes = [(0, 0, 30, 44), (3, 40, 20, 4), (29, 1, 1, 43), (7, 9, 11, 13)]
    ours = resized_crops(clips, torch.tensor(boxes), (12, 18))
    assert ours.shape == (4, 5, 3, 12, 18)
    assert (ours - reference(clips, boxes, (12, 18))).abs().max() < 1e-3  # as for uint8 images: measured 1.8e-4
    frames = clips.permute(0, 1, 3, 4, 2).contiguous()  # (B, T, H, W, C), as decoders deliver them
    # channels-last runs the same weighted sums (measured bit-exact); 1e-4 (+ allclose's rtol 1e-5, 2.6e-3 at 255)
    # allows only a different summation order on the 0..255 scale
    assert torch.allclose(resized_crops(frames, torch.tensor(boxes), (12, 18), channels_last=True), ours, atol=1e-4)
    images = clips[:, 0].permute(0, 2, 3, 1)  # (B, H, W, C) view
    assert torch.allclose(resized_crops(images, torch.tensor(boxes), (12, 18), channels_last=True), ours[:, 0],
                          atol=1e-4)


def test_several_passes_equal_one_and_output_dtypes():
    x = torch.rand(len(BOXES), 3, H, W, generator=torch.Generator().manual_seed(5))
    one = resized_crops(x, torch.tensor(BOXES), (16, 20))
    assert torch.equal(resized_crops(x, torch.tensor(BOXES), (16, 20), max_bytes=1), one)  # one sample per pass
    half = resized_crops(x, torch.tensor(BOXES), (16, 20), out_dtype=torch.bfloat16)
    # bfloat16 rounding of values in [0, 1]: half an ulp below 1 is 2^-9 = 2e-3 (measured 1.95e-3); 1e-2 is 5x
    assert half.dtype == torch.bfloat16 and torch.allclose(half.float(), one, atol=1e-2)
    with pytest.raises(ValueError, match="boxes"):
        resized_crops(x, torch.tensor(BOXES[:3]), 16)


def test_stack_padded_batches_images_of_different_sizes():
    g = torch.Generator().manual_seed(6)
    shapes = [(20, 31), (33, 17), (9, 40), (33, 40), (1, 1)]
    images = [torch.rand(3, h, w, generator=g) for h, w in shapes]
    images[1][0, -1, -1] = math.inf  # what a row window reads past an image must never leak into the padding
    padded, sizes = stack_padded(images)
    assert padded.shape == (5, 3, 33, 40) and sizes.tolist() == [list(s) for s in shapes]
    for b, (img, (h, w)) in enumerate(zip(images, shapes)):
        assert torch.equal(padded[b, :, :h, :w], img)
        assert padded[b, :, h:].abs().sum() == 0 and padded[b, :, :, w:].abs().sum() == 0
    u8, _ = stack_padded([(img * 255).to(torch.uint8) for img in images[2:]])
    assert u8.dtype == torch.uint8 and torch.equal(u8[0, :, :9, :40], (images[2] * 255).to(torch.uint8))
    # crops of the padded batch equal crops of each image alone: boxes lie inside each image
    images[1][0, -1, -1] = 0.5
    padded, _ = stack_padded(images)
    boxes = [(1, 2, 18, 29), (0, 0, 33, 17), (8, 39, 1, 1), (5, 9, 28, 30), (0, 0, 1, 1)]
    ours = resized_crops(padded, torch.tensor(boxes), (13, 21))
    for b, (img, box) in enumerate(zip(images, boxes)):
        # float32 on [0, 1], as in test_float_crops_equal_per_sample_interpolate: measured 5.7e-7
        assert (ours[b] - reference(img[None], [box], (13, 21))[0]).abs().max() < 1e-4


def test_no_host_syncs():
    x = torch.randint(0, 256, (4, 3, H, W), dtype=torch.uint8)
    boxes = ints_to_device(BOXES[:4], x.device)
    assert count_host_syncs(lambda: resized_crops(x, boxes, (16, 16), out_dtype=torch.uint8)) == []
    assert count_host_syncs(lambda: axis_weights(H, 16, boxes[:, 0], boxes[:, 2])) == []
    images = [torch.zeros(3, 10 + i, 20 - i, dtype=torch.uint8) for i in range(4)]
    assert count_host_syncs(lambda: stack_padded(images)) == []
    assert count_host_syncs(lambda: ints_to_device([[1, 2], [3, 4]], "cpu")) == []
    assert ints_to_device([[1, 2], [3, 4]], "cpu").tolist() == [[1, 2], [3, 4]]


def test_tf32_is_off_inside_and_restored_after():
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip("torch < 2.9 has only the legacy TF32 flag")
    saved = matmul.fp32_precision
    try:
        matmul.fp32_precision = "tf32"
        with _ieee_fp32(torch.device("cuda")):  # flags only: runs without a GPU
            assert matmul.fp32_precision == "ieee"
        assert matmul.fp32_precision == "tf32"
        with _ieee_fp32(torch.device("cpu")):
            assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = saved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu_without_syncs_even_with_tf32_enabled():
    from mmssl.train.syncs import cuda_syncs

    g = torch.Generator().manual_seed(7)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in [(37, 53), (53, 37)]]
    boxes = [(2, 3, 30, 40), (10, 0, 43, 37)]
    cpu = resized_crops(stack_padded(images)[0], torch.tensor(boxes), (24, 32))
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    matmul.fp32_precision = "tf32"
    try:
        gpu_images = [img.cuda() for img in images]
        run = lambda: resized_crops(stack_padded(gpu_images)[0], ints_to_device(boxes, "cuda"), (24, 32))  # noqa: E731
        gpu = run()
        # 0..255 scale; each device's float32 result is a few ulps (~4e-5 measured on the CPU) from a float64
        # resize, so they differ by ~1e-4 at most; TF32 would be ~0.1 off
        assert (gpu.cpu() - cpu).abs().max() < 1e-3
        assert cuda_syncs(run) == 0
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = saved
