import numpy as np
import pytest
import torch

from mmssl.modalities import all_modalities, get_modality
from mmssl.tokens import Tokens, gather_tokens, patchify, scatter_tokens, unpatchify, visible_from_mask


def mae_patchify(imgs: np.ndarray, p: int) -> np.ndarray:
    """MAE's `patchify`, written out: (N, 3, H, W) -> (N, L, p*p*3)."""
    n, c, hh, ww = imgs.shape
    h, w = hh // p, ww // p
    x = imgs.reshape(n, c, h, p, w, p)
    x = np.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, h * w, p * p * c)


def videomae_patchify(video: np.ndarray, t: int, p: int) -> np.ndarray:
    """VideoMAE's rearrange 'b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2 c)', written out."""
    b, c, tt, hh, ww = video.shape
    x = video.reshape(b, c, tt // t, t, hh // p, p, ww // p, p)
    x = np.einsum("bcTxHyWz->bTHWxyzc", x)
    return x.reshape(b, (tt // t) * (hh // p) * (ww // p), t * p * p * c)


def test_image_patchify_equals_mae() -> None:
    x = torch.randn(2, 3, 64, 48)
    ours, grid = patchify(x, 16)
    assert grid == (4, 3)
    np.testing.assert_array_equal(ours.numpy(), mae_patchify(x.numpy(), 16))


def test_video_patchify_equals_videomae() -> None:
    x = torch.randn(2, 3, 4, 32, 48)
    ours, grid = patchify(x, (2, 16, 16))
    assert grid == (2, 2, 3)
    np.testing.assert_array_equal(ours.numpy(), videomae_patchify(x.numpy(), 2, 16))


def _small_input(name: str) -> torch.Tensor:
    spec = get_modality(name)
    size = tuple(2 * p for p in spec.patch)
    if spec.categorical:
        return torch.randint(0, spec.num_classes, (2, *size))
    return torch.randn(2, spec.channels, *size)


@pytest.mark.parametrize("name", ["image", "video", "audio", "depth", "semseg"])
def test_round_trip_every_modality(name: str) -> None:
    spec = get_modality(name)
    x = _small_input(name)
    tokens = spec.tokenize(x)
    assert tokens.modality == name and tokens.patches.shape[-1] == spec.patch_dim
    back = tokens.image()
    expect = x.unsqueeze(1) if spec.categorical else x
    assert back.dtype == expect.dtype
    assert torch.equal(back, expect)


def test_all_five_modalities_are_discovered() -> None:
    assert {"image", "video", "audio", "depth", "semseg"} <= set(all_modalities())


def test_unpatchify_inverts_for_odd_shapes() -> None:
    x = torch.randn(1, 2, 6, 10, 4)
    p, grid = patchify(x, (3, 5, 2))
    assert torch.equal(unpatchify(p, grid, (3, 5, 2)), x)


def test_patchify_rejects_indivisible_shape() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.randn(1, 3, 30, 32), 16)


def test_tokens_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="grid"):
        Tokens(torch.randn(2, 5, 768), grid=(2, 2), patch=(16, 16), modality="image")
    with pytest.raises(ValueError, match="visible"):
        Tokens(torch.randn(2, 4, 768), grid=(2, 2), patch=(16, 16), modality="image",
               visible=torch.zeros(3, 1, dtype=torch.long))


def test_gather_and_scatter_visible_tokens() -> None:
    x = torch.arange(2 * 6 * 3, dtype=torch.float).reshape(2, 6, 3)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 0, 1, 1, 1, 0]], dtype=torch.bool)
    vis = visible_from_mask(mask)
    assert vis.tolist() == [[1, 3, 4], [0, 1, 5]]
    tokens = Tokens(x, grid=(2, 3), patch=(1, 1), modality="image").with_mask(mask)
    assert torch.equal(tokens.mask, mask)
    picked = tokens.visible_patches()
    assert torch.equal(picked, gather_tokens(x, vis)) and torch.equal(picked[0, 0], x[0, 1])
    full = scatter_tokens(picked, vis, 6, fill=-1.0)
    assert torch.equal(full[~mask], x[~mask]) and bool((full[mask] == -1).all())
    token = torch.tensor([7.0, 8.0, 9.0])
    assert torch.equal(scatter_tokens(picked, vis, 6, fill=token)[0, 0], token)


def test_visible_from_mask_rejects_unequal_counts() -> None:
    with pytest.raises(ValueError, match="same number"):
        visible_from_mask(torch.tensor([[True, False], [False, False]]))


def test_tokens_to_keeps_integer_ids() -> None:
    ids = get_modality("semseg").tokenize(torch.randint(0, 5, (1, 8, 8)))
    moved = ids.to("cpu", dtype=torch.bfloat16)
    assert moved.patches.dtype == torch.long
    img = get_modality("image").tokenize(torch.randn(1, 3, 16, 16)).to(dtype=torch.bfloat16)
    assert img.patches.dtype == torch.bfloat16


def test_modality_variant_from_a_mapping() -> None:
    small = get_modality({"name": "image", "patch": [8, 8], "size": [64, 64]})
    assert small.name == "image" and small.patch == (8, 8) and small.grid == (8, 8) and small.patch_dim == 192
    with pytest.raises(KeyError, match="only these fields"):
        get_modality({"name": "image", "patchsize": 8})
    with pytest.raises(ValueError, match="not divisible"):
        get_modality({"name": "image", "patch": [9, 9]})


def test_uint8_patches_normalise_like_dense_normalisation():
    x = torch.randint(0, 256, (2, 3, 4, 32, 32), dtype=torch.uint8)
    variant = get_modality({"name": "video", "patch": [2, 16, 16], "size": [4, 32, 32]})
    fused = variant.normalize_patches(variant.tokenize(x).patches)
    dense = variant.tokenize(variant.normalize(x.float() / 255)).patches
    # one fused scale and shift vs / 255 then (x - mean) / std, float32 on values up to ~2.6: a few ulps (2.4e-7
    # each; measured 4.8e-7)
    assert fused.dtype == torch.float32 and torch.allclose(fused, dense, atol=1e-5)
    with pytest.raises(ValueError, match="no dataset statistics"):
        get_modality("semseg").normalize_patches(x.reshape(2, 1, -1))
