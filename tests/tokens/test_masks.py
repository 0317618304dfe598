import math

import pytest
import torch

from mmssl.tokens import (AllMask, BlockMask, CentreMask, DirichletMask, NoMask, RandomMask, StripeMask, TubeMask,
                          visible_from_mask)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9, 1.0])
def test_random_mask_keeps_mae_count(ratio: float) -> None:
    mask = RandomMask(ratio)(8, (14, 14))
    keep = int(196 * (1 - ratio))
    assert mask.shape == (8, 196) and mask.dtype == torch.bool
    assert ((~mask).sum(1) == keep).all()
    if 0 < keep < 196:
        assert not torch.equal(mask[0], mask[1])  # per-sample masks


def test_random_mask_is_uniform_over_positions() -> None:
    mask = RandomMask(0.75)(4000, (4, 4)).float()
    # each position's hidden rate over 4000 rows has sd sqrt(0.75 * 0.25 / 4000) = 0.0068: 0.03 is 4.4 sd (measured
    # 0.014 at worst of the 16)
    assert torch.allclose(mask.mean(0), torch.full((16,), 0.75), atol=0.03)


def test_tube_mask_tiles_one_spatial_mask_over_time() -> None:
    grid = (8, 14, 14)
    mask = TubeMask(0.9)(4, grid)
    per_frame = mask.reshape(4, 8, 196)  # (B, T, H*W)
    assert (per_frame == per_frame[:, :1]).all()
    assert (per_frame.sum(2) == int(0.9 * 196)).all()
    assert ((~mask).sum(1) == 8 * (196 - int(0.9 * 196))).all()


def test_block_mask_exact_count_and_blocky() -> None:
    mask = BlockMask(0.4)(6, (14, 14))
    assert (mask.sum(1) == int(0.4 * 196)).all()
    grid = mask.reshape(6, 14, 14).float()
    # blocks make hidden cells cluster: a hidden cell's right neighbour is hidden far more often than 40 %
    both = (grid[:, :, :-1] * grid[:, :, 1:]).sum() / grid[:, :, :-1].sum()
    assert both > 0.6  # independent cells: 77 / 195 = 0.39; measured 0.82 (0.76 at worst over 50 seeds)


def test_block_mask_shares_spatial_mask_over_time() -> None:
    mask = BlockMask(0.5)(2, (3, 8, 8)).reshape(2, 3, 64)
    assert (mask == mask[:, :1]).all()


def test_centre_mask_covers_the_centre() -> None:
    mask = CentreMask(0.5)(2, (8, 8)).reshape(2, 8, 8)
    expect = torch.zeros(8, 8, dtype=torch.bool)
    expect[2:6, 2:6] = True
    assert (mask == expect).all()


def test_stripe_mask_hides_whole_rows_and_columns() -> None:
    t, f = 64, 8
    mask = StripeMask(0.2, 0.25)(5, (t, f))
    grid = mask.reshape(5, t, f)
    nt, nf = int(t * 0.2), int(f * 0.25)
    assert ((~mask).sum(1) == (t - nt) * (f - nf)).all()
    full_times = grid.all(2).sum(1)
    full_freqs = grid.all(1).sum(1)
    assert (full_times == nt).all() and (full_freqs == nf).all()


@pytest.mark.parametrize("alpha", [1.0, 0.2, 5.0])
def test_dirichlet_mask_keeps_exactly_k(alpha: float) -> None:
    sizes = (196, 196, 196)
    sampler = DirichletMask(visible=98, alpha=alpha)
    mask = sampler(512, sizes)
    assert mask.shape == (512, 588)
    assert ((~mask).sum(1) == 98).all()
    shares = torch.stack([(~m).sum(1) for m in DirichletMask.split(mask, sizes)], dim=1)  # (B, 3)
    assert (shares >= 0).all() and (shares.sum(1) == 98).all()
    # the split varies per sample, and over many samples each modality gets about a third: a share of 98 is
    # 98 * Dirichlet(alpha, alpha, alpha), whose mean over 512 samples has sd 98 * sqrt(2 / (9 * (3 alpha + 1) * 512))
    # (1.6 at alpha 0.2, 1.0 at 1, 0.51 at 5). The bound is 6 sd (measured 2.7 sd at worst, alpha 1); it was 12 over
    # 64 samples, 2.6 sd at alpha 0.2
    assert shares.float().std(0).min() > 0
    sd = 98 * math.sqrt(2 / (9 * (3 * alpha + 1) * len(shares)))
    assert torch.allclose(shares.float().mean(0), torch.full((3,), 98 / 3), atol=6 * sd)


def test_dirichlet_mask_with_small_modality_caps_its_share() -> None:
    mask = DirichletMask(visible=20)(32, (4, 100))
    first, _ = DirichletMask.split(mask, (4, 100))
    assert ((~mask).sum(1) == 20).all() and ((~first).sum(1) <= 4).all()


def test_dirichlet_mask_rejects_too_large_budget() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        DirichletMask(visible=10)(2, (3, 3))


def test_none_and_all() -> None:
    assert not NoMask()(3, (4, 4)).any()
    assert AllMask()(3, (2, 2, 2)).all()
    assert visible_from_mask(NoMask()(3, (4, 4))).shape == (3, 16)


@pytest.mark.parametrize("sampler,grid", [
    (RandomMask(0.75), (6, 6)), (TubeMask(0.9), (4, 6, 6)), (BlockMask(0.4), (8, 8)),
    (StripeMask(0.2, 0.2), (20, 10)), (DirichletMask(visible=10), (12, 12, 12)),
])
def test_generator_makes_masks_reproducible(sampler, grid) -> None:
    a = sampler(4, grid, generator=torch.Generator().manual_seed(3))
    b = sampler(4, grid, generator=torch.Generator().manual_seed(3))
    c = sampler(4, grid, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_ratio_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError, match="ratio"):
        RandomMask(1.5)
    assert math.isclose(RandomMask().ratio, 0.75)  # the default, a float literal: isclose's 1e-9 relative
