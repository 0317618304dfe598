import numpy as np
import pytest
import torch

from mmssl.tokens import interpolate_pos_embed, position_table, sincos_pos_embed, sinusoid_table


def mae_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def mae_2d(embed_dim: int, grid_size: int, cls_token: bool) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed, written out."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # w goes first
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
    emb_h = mae_1d(embed_dim // 2, grid[0])
    emb_w = mae_1d(embed_dim // 2, grid[1])
    emb = np.concatenate([emb_h, emb_w], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb


def videomae_table(n_position: int, d_hid: int) -> np.ndarray:
    """VideoMAE's get_sinusoid_encoding_table, written out."""
    table = np.array([[pos / np.power(10000, 2 * (j // 2) / d_hid) for j in range(d_hid)]
                      for pos in range(n_position)])
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return table


@pytest.mark.parametrize("dim,size,cls", [(768, 14, True), (512, 14, True), (64, 5, False)])
def test_2d_sincos_equals_mae(dim: int, size: int, cls: bool) -> None:
    ours = sincos_pos_embed((size, size), dim, cls_token=cls)
    # float32 sines and cosines in [-1, 1] against float64: half an ulp is 6e-8 (measured 3e-8)
    np.testing.assert_allclose(ours.numpy(), mae_2d(dim, size, cls), atol=1e-6)


def test_sinusoid_table_equals_videomae() -> None:
    # float32 table against float64, as above (measured 3e-8)
    np.testing.assert_allclose(sinusoid_table(1568 // 8, 384).numpy(), videomae_table(196, 384), atol=1e-6)
    flat = position_table("sinusoid", (2, 3, 4), 96)
    np.testing.assert_allclose(flat.numpy(), videomae_table(24, 96), atol=1e-6)


def test_3d_and_rectangular_grids_give_distinct_rows() -> None:
    for grid, dim in [((8, 14, 14), 192), ((64, 8), 192), ((4, 5, 6), 100)]:
        emb = sincos_pos_embed(grid, dim)
        assert emb.shape == (int(np.prod(grid)), dim)
        assert torch.unique(emb, dim=0).shape[0] == emb.shape[0]


def test_3d_blocks_are_axis_embeddings() -> None:
    emb = sincos_pos_embed((2, 3, 4), 48).reshape(2, 3, 4, 48)
    # the first channel block encodes the last axis only: constant along the other two (the same values computed
    # once and broadcast: measured exact; allclose's defaults)
    assert torch.allclose(emb[:, :, :, :16], emb[:1, :1, :, :16].expand(2, 3, 4, 16))
    assert torch.allclose(emb[..., 32:], emb[:, :1, :1, 32:].expand(2, 3, 4, 16))


def test_interpolation_keeps_prefix_and_resizes() -> None:
    pos = sincos_pos_embed((4, 4), 32, cls_token=True)
    assert torch.equal(interpolate_pos_embed(pos, (4, 4), (4, 4), num_prefix=1), pos)
    new = interpolate_pos_embed(pos, (4, 4), (8, 6), num_prefix=1)
    assert new.shape == (1 + 48, 32) and torch.equal(new[0], pos[0])
    vid = interpolate_pos_embed(sincos_pos_embed((2, 4, 4), 48), (2, 4, 4), (4, 4, 4))
    assert vid.shape == (64, 48)


def test_unknown_table_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown position table"):
        position_table("learned3d", (2, 2), 8)
