"""Colorization (Zhang et al. 2016): the 313 bins, soft encoding, rebalancing, annealed mean, shapes, figure,
learning (probed on what the encoder reads: L alone)."""

import pytest
import torch
import torch.nn.functional as F
from learning import pooled, tiny_encoder, tiny_spec
from PIL import Image
from pretext_data import coloured_objects
from pretext_learning import SMALL, learn, vit

from mmssl.color import rgb_to_lab
from mmssl.colorbins import ab_bins, annealed_mean, rebalance_weights, smooth_prior, soft_encode
from mmssl.methods.colorization import Colorization, grey_tokens, lab_of
from mmssl.models.cnn import CNNEncoder

SPEC = tiny_spec("image", patch=(8, 8), size=(32, 32))


def test_313_bins_on_the_grid_cover_srgb() -> None:
    bins = ab_bins()
    assert bins.shape == (313, 2) and (bins % 10 == 0).all() and len({tuple(b) for b in bins.tolist()}) == 313
    v = torch.linspace(0, 1, 24)
    rgb = torch.stack(torch.meshgrid(v, v, v, indexing="ij")).reshape(3, 24, 576)
    ab = rgb_to_lab(rgb)[1:].reshape(2, -1).T
    # every sRGB colour falls in (or by) a bin: no point of a 10 x 10 cell is farther than 5 * sqrt(2) = 7.07 from
    # its centre, + 1 for colours just past a border bin (measured 7.02 at worst)
    assert (torch.cdist(ab, bins).amin(1) <= 5 * 2 ** 0.5 + 1).all()


def test_soft_encoding_five_gaussian_neighbours_sum_to_one() -> None:
    ab = torch.randn(2, 2, 3, 4) * 40
    target = soft_encode(ab)
    assert target.shape == (2, 313, 3, 4) and torch.allclose(target.sum(1), torch.ones(2, 3, 4))  # an ulp: 1.2e-7
    assert ((target > 0).sum(1) == 5).all()
    point, bins = ab[0, :, 1, 2], ab_bins()
    d = (bins - point).norm(dim=1)
    near = d.argsort()[:5]
    expected = torch.exp(-d[near] ** 2 / (2 * 5.0 ** 2))
    assert torch.allclose(target[0, near, 1, 2], expected / expected.sum(), atol=1e-5)  # float32 weights < 1: 3.6e-7


def test_rebalancing_and_annealed_mean_formulas() -> None:
    counts = torch.rand(313) ** 4 * 100
    prior = smooth_prior(counts)
    bins = ab_bins()
    kernel = torch.exp(-torch.cdist(bins, bins) ** 2 / 50.0)
    ref = kernel @ (counts / counts.sum())
    # the same float32 formulas (measured exact): priors <= 0.013 and weights normalised to a float32 sum of 1
    assert torch.allclose(prior, ref / ref.sum(), atol=1e-6)
    w = rebalance_weights(prior, lam=0.5)
    raw = 1 / (0.5 * prior + 0.5 / 313)
    assert torch.allclose(w, raw / (prior * raw).sum(), rtol=1e-5) and torch.isclose((prior * w).sum(), torch.tensor(1.0))
    probs = torch.softmax(torch.randn(1, 313, 1, 1), 1)
    f = probs[0, :, 0, 0] ** (1 / 0.38)
    # a float32 mean over 313 bins of ab up to ~110: ~1e-5 (measured 1.3e-5, and 1.5e-5 from float64)
    assert torch.allclose(annealed_mean(probs)[0, :, 0, 0], (f / f.sum()) @ bins, atol=1e-3)


@pytest.mark.parametrize("cnn", [False, True])
def test_quarter_resolution_loss_and_figure(cnn, tmp_path) -> None:
    enc = CNNEncoder("resnet18", modality=SPEC, output_stride=8) if cnn else tiny_encoder(SPEC, depth=1, dim=32)
    method = Colorization(enc)
    x, _ = coloured_objects(4, size=32, generator=torch.Generator().manual_seed(0))
    tokens = SPEC.tokenize(SPEC.normalize(x))
    lab = rgb_to_lab(x)
    assert method.logits(lab[:, :1]).shape == (4, 313, 8, 8)
    out = method({"image": tokens})
    out.loss.backward()
    assert torch.isfinite(out.loss) and method.counts.sum() == 4 * 64
    with Image.open(method.figure({"image": tokens}, tmp_path / "col.png")) as img:
        assert img.width >= 3 * 96


def grey_features(encoder, images: torch.Tensor) -> torch.Tensor:
    """What the colorization encoder reads: pooled features (B, D) of the L channel alone (as a grey image)."""
    return pooled(encoder, grey_tokens(rgb_to_lab(images)[:, :1], encoder.modality))


def coloured_cells(method, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest bins (B, h, w) of the 1/4-resolution cells and which cells are coloured (chroma > 15)."""
    _, nearest = method.targets(lab)
    chroma = F.avg_pool2d(lab[:, 1:], method.out_stride).norm(dim=1)  # (B, h, w)
    return nearest, chroma > 15


def bin_accuracy(method, batch: dict) -> float:
    """Held-out accuracy of the predicted bin on coloured cells (the grey ground is trivial)."""
    lab = lab_of(batch["image"], method.modality)
    nearest, fg = coloured_cells(method, lab)
    return float((method.logits(lab[:, :1]).argmax(1) == nearest)[fg].float().mean())


@pytest.mark.slow
def test_colorization_learns_coloured_objects() -> None:
    method = Colorization(vit(SMALL))
    r = learn(method, bin_accuracy, steps=200, lr=2e-3, batch_size=32, spec=SMALL, data=coloured_objects,
              features=grey_features)
    x, _ = coloured_objects(1280, size=32, generator=torch.Generator().manual_seed(0))
    nearest, fg = coloured_cells(method, rgb_to_lab(x))
    constant = float(torch.bincount(nearest[:1024][fg[:1024]]).argmax())
    majority = 100 * float((nearest[1024:][fg[1024:]] == constant).float().mean())  # best constant coloured bin
    print(f"\nColorization: loss {r['first']:.3f} -> {r['last']:.3f} ({r['secs']:.1f}s); held-out bin accuracy on "
          f"coloured cells {r['pretext']:.1f}% vs best constant bin {majority:.1f}%; on L alone, k-NN top-1 "
          f"trained {r['trained']:.1f}% vs random init {r['random']:.1f}%, linear probe {r['linear']:.1f}% vs "
          f"{r['linear_random']:.1f}%")
    # measured: loss 3.95 -> 2.29, bin accuracy 19.2% vs 5.9%, k-NN 89.1% vs 61.7%, linear 94.9% vs 83.6%
    assert r["last"] < 0.8 * r["first"]
    assert r["pretext"] > 2 * majority
    assert r["trained"] > r["random"] + 10.0
    assert r["linear"] > r["linear_random"] + 3.0 and 100 - r["linear"] < 0.6 * (100 - r["linear_random"])


def test_recipe_writes_the_colorization_figure_when_asked(tmp_path) -> None:
    from figure_runs import figures_of

    (png,) = figures_of("image/colorization_tiny", tmp_path)
    with Image.open(png) as img:  # grey input, annealed-mean colorization, ground truth; 2 samples at 2x
        assert img.format == "PNG" and img.size == (3 * 96, 2 * 96)
