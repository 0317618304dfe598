"""Colorization (Zhang et al. 2016): the 313 bins, soft encoding, rebalancing, annealed mean, shapes, learning."""

import pytest
import torch
from learning import knn_top1, snapshot, tiny_encoder, tiny_spec, train
from PIL import Image
from twoviews import one_thread

from mmssl.color import rgb_to_lab
from mmssl.colorbins import ab_bins, annealed_mean, rebalance_weights, smooth_prior, soft_encode
from mmssl.methods.colorization import Colorization
from mmssl.models.cnn import CNNEncoder
from mmssl.tokens import Tokens

SPEC = tiny_spec("image", patch=(8, 8), size=(32, 32))
HUES = torch.tensor([[0.9, 0.15, 0.1], [0.1, 0.75, 0.15], [0.15, 0.25, 0.9], [0.9, 0.8, 0.1]])


def hued_shapes(n: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes whose class sets the hue (brightness random) on grey ground: colour follows from structure."""
    from synthetic import shape_masks

    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=gen)
    radii = 32 * (0.22 + 0.1 * torch.rand(n, generator=gen))
    centres = radii[:, None] + torch.rand(n, 2, generator=gen) * (32 - 2 * radii[:, None])
    mask = shape_masks(labels, centres, radii, 32).unsqueeze(1)  # (n, 1, 32, 32)
    fg = HUES[labels].reshape(n, 3, 1, 1) * (0.6 + 0.4 * torch.rand(n, 1, 1, 1, generator=gen))
    bg = 0.2 + 0.6 * torch.rand(n, 1, 1, 1, generator=gen).expand(n, 3, 1, 1)
    return (bg + (fg - bg) * mask).clamp(0, 1), labels


def test_313_bins_on_the_grid_cover_srgb() -> None:
    bins = ab_bins()
    assert bins.shape == (313, 2) and (bins % 10 == 0).all() and len({tuple(b) for b in bins.tolist()}) == 313
    v = torch.linspace(0, 1, 24)
    rgb = torch.stack(torch.meshgrid(v, v, v, indexing="ij")).reshape(3, 24, 576)
    ab = rgb_to_lab(rgb)[1:].reshape(2, -1).T
    assert (torch.cdist(ab, bins).amin(1) <= 5 * 2 ** 0.5 + 1).all()  # every sRGB colour falls in (or by) a bin


def test_soft_encoding_five_gaussian_neighbours_sum_to_one() -> None:
    ab = torch.randn(2, 2, 3, 4) * 40
    target = soft_encode(ab)
    assert target.shape == (2, 313, 3, 4) and torch.allclose(target.sum(1), torch.ones(2, 3, 4))
    assert ((target > 0).sum(1) == 5).all()
    point, bins = ab[0, :, 1, 2], ab_bins()
    d = (bins - point).norm(dim=1)
    near = d.argsort()[:5]
    expected = torch.exp(-d[near] ** 2 / (2 * 5.0 ** 2))
    assert torch.allclose(target[0, near, 1, 2], expected / expected.sum(), atol=1e-5)


def test_rebalancing_and_annealed_mean_formulas() -> None:
    counts = torch.rand(313) ** 4 * 100
    prior = smooth_prior(counts)
    bins = ab_bins()
    kernel = torch.exp(-torch.cdist(bins, bins) ** 2 / 50.0)
    ref = kernel @ (counts / counts.sum())
    assert torch.allclose(prior, ref / ref.sum(), atol=1e-6)
    w = rebalance_weights(prior, lam=0.5)
    raw = 1 / (0.5 * prior + 0.5 / 313)
    assert torch.allclose(w, raw / (prior * raw).sum(), rtol=1e-5) and torch.isclose((prior * w).sum(), torch.tensor(1.0))
    probs = torch.softmax(torch.randn(1, 313, 1, 1), 1)
    f = probs[0, :, 0, 0] ** (1 / 0.38)
    assert torch.allclose(annealed_mean(probs)[0, :, 0, 0], (f / f.sum()) @ bins, atol=1e-3)


@pytest.mark.parametrize("cnn", [False, True])
def test_quarter_resolution_loss_and_figure(cnn, tmp_path) -> None:
    enc = CNNEncoder("resnet18", modality=SPEC, output_stride=8) if cnn else tiny_encoder(SPEC, depth=1, dim=32)
    method = Colorization(enc)
    x, _ = hued_shapes(4, seed=0)
    tokens = SPEC.tokenize(SPEC.normalize(x))
    lab = rgb_to_lab(x)
    assert method.logits(lab[:, :1]).shape == (4, 313, 8, 8)
    out = method({"image": tokens})
    out.loss.backward()
    assert torch.isfinite(out.loss) and method.counts.sum() == 4 * 64
    with Image.open(method.figure({"image": tokens}, tmp_path / "col.png")) as img:
        assert img.width >= 3 * 96


@pytest.mark.slow
def test_colorization_learns_hued_shapes() -> None:
    with one_thread():
        torch.manual_seed(0)
        x, y = hued_shapes(1280, seed=0)
        tokens = SPEC.tokenize(SPEC.normalize(x))
        part = lambda i: Tokens(patches=tokens.patches[i], grid=tokens.grid, patch=tokens.patch, modality="image")  # noqa: E731
        method = Colorization(tiny_encoder(SPEC, depth=2, dim=64))
        random_init = snapshot(method.encoder)
        first, last, secs = train(method, lambda i: {"image": part(i)}, 1024, steps=150, lr=2e-3)
        test = part(slice(1024, None))
        with torch.no_grad():
            lab = rgb_to_lab(x[1024:])
            _, nearest = method.targets(lab)
            grey = torch.bincount(method.targets(rgb_to_lab(x[:1024]))[1].flatten()).argmax()
            fg = nearest != grey  # coloured cells: the grey ground is trivial
            hit = method.logits(lab[:, :1]).argmax(1) == nearest
            acc = float(hit[fg].float().mean())
            majority = float(torch.bincount(nearest[fg]).max() / fg.sum())  # best constant coloured bin
        trained = knn_top1(method.encoder, part(slice(0, 1024)), y[:1024], test, y[1024:])
        rand = knn_top1(random_init, part(slice(0, 1024)), y[:1024], test, y[1024:])
    print(f"\nColorization: loss {first:.3f} -> {last:.3f} ({secs:.1f}s); held-out bin accuracy on coloured cells {100 * acc:.1f}% vs "
          f"best constant bin {100 * majority:.1f}%; k-NN top-1 trained {trained:.1f}% vs random init {rand:.1f}%")
    assert acc > 1.5 * majority  # measured 16.7% vs 7.8%
    # the k-NN figure is printed, not asserted: on these images the hue gives the class away to random features
