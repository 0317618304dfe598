"""Context encoder (Pathak et al. 2016): region masks (per-sample draws), the x10 overlap border, loss weights, the
one-backward GAN, the inpainting figure, learning (joint and L2-only)."""

import pytest
import torch
import torch.nn.functional as F
from learning import tiny_encoder, tiny_spec
from PIL import Image
from pretext_data import upright_objects
from pretext_learning import SPEC as PROBE_SPEC
from pretext_learning import learn, vit

from mmssl.methods.context_encoder import CentreRegion, ContextEncoder, RandomBlocks, RandomShape, border_weights

SPEC = tiny_spec("image", patch=(8, 8), size=(32, 32))


def _tokens(b: int = 2):
    return SPEC.tokenize(SPEC.normalize(torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(0))))


def test_regions_cover_what_they_claim() -> None:
    centre = CentreRegion(0.5)(2, (32, 32))
    assert centre[:, :, 8:24, 8:24].all() and centre.sum() == 2 * 16 * 16
    gen = torch.Generator().manual_seed(0)
    shape = RandomShape(0.25)(3, (32, 32), generator=gen)
    assert (shape.flatten(1).sum(1) == 256).all()
    blocks = RandomBlocks(0.25, block=0.25)(3, (32, 32), generator=gen)
    cover = blocks.float().flatten(1).mean(1)
    # stops at the first block past 1/4: at most one 8 x 8 block over (measured 0.25, 0.307, 0.25); 1e-6 is for the
    # float32 mean of 1024 booleans
    assert (cover >= 0.25).all() and (cover < 0.25 + 64 / 1024 + 1e-6).all()


def test_border_weights_and_joint_loss() -> None:
    region = CentreRegion(0.5)(1, (32, 32))
    hole, w = border_weights(region, overlap=4)
    assert hole.sum() == 8 * 8 and hole[:, :, 12:20, 12:20].all()
    assert (w[region & ~hole] == 10).all() and (w[hole] == 1).all() and (w[~region] == 0).all()
    method = ContextEncoder(tiny_encoder(SPEC, depth=1, dim=32), disc_width=8)
    assert (method.lambda_rec, method.lambda_adv) == (0.999, 0.001)
    tokens = _tokens()
    images = tokens.image()
    pred = torch.randn_like(images)
    method.inpaint = lambda x, h: pred
    out = method({"image": tokens})
    expected_rec = (w * (pred - images) ** 2).sum() / (region.sum() * 3 * 2)
    # the same float32 sums (measured exact); rtol 1e-5 allows another reduction order
    assert torch.allclose(out.logs["rec"], expected_rec, rtol=1e-5)
    assert torch.allclose(out.logs["loss"], 0.999 * expected_rec + 0.001 * out.logs["adv"], rtol=1e-5)


def test_one_backward_gives_each_network_its_own_gradient() -> None:
    torch.manual_seed(0)
    method = ContextEncoder(tiny_encoder(SPEC, depth=1, dim=32), disc_width=8)
    tokens = _tokens()
    method({"image": tokens}).loss.backward()
    d_grad = [p.grad.clone() for p in method.discriminator.parameters()]
    g_grad = method.decoder.head.pred.weight.grad.clone()
    # the discriminator's gradient must be that of its own loss alone (centre region: the same mask again)
    images = tokens.image()
    region = method.region(2, (32, 32))
    hole, _ = border_weights(region, overlap=4)
    fake = torch.where(region, method.inpaint(images, hole), images).detach()
    ones = torch.ones(2)
    loss_d = (F.binary_cross_entropy_with_logits(method.discriminator(images), ones)
              + F.binary_cross_entropy_with_logits(method.discriminator(fake), 0 * ones))
    ref = torch.autograd.grad(loss_d, list(method.discriminator.parameters()))
    # the same graph's gradients, |g| <= 0.28 (measured exact); 1e-6 (+ rtol 1e-5) allows another reduction order
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(d_grad, ref))
    assert g_grad.abs().sum() > 0
    l2 = ContextEncoder(tiny_encoder(SPEC, depth=1, dim=32), adversarial=False)
    assert l2.discriminator is None and set(l2({"image": tokens}).logs) == {"loss", "rec"}


def test_inpainting_figure(tmp_path) -> None:
    joint = ContextEncoder(tiny_encoder(SPEC, depth=1, dim=32), disc_width=8)
    l2 = ContextEncoder(tiny_encoder(SPEC, depth=1, dim=32), adversarial=False)
    with Image.open(joint.figure({"image": _tokens()}, tmp_path / "ce.png", l2_only=l2)) as img:
        assert img.width == 4 * 96


def test_regions_are_drawn_per_sample() -> None:
    method = ContextEncoder(tiny_encoder(SPEC, depth=1, dim=32), region=RandomShape(0.25), adversarial=False)
    images = torch.zeros(3, 3, 32, 32)
    ids = [(0, 0, "a"), (0, 0, "b"), (0, 0, "c")]
    first = method.regions(images, ids)
    torch.manual_seed(9)  # the global RNG plays no part
    assert torch.equal(method.regions(images[:2], [ids[2], ids[0]]), first[[2, 0]])
    assert not torch.equal(first[0], first[1]) and (first.flatten(1).sum(1) == 256).all()
    assert not torch.equal(method.regions(images[:1], [(0, 1, "a")]), first[:1])  # a new epoch, a new region


def _held_out_errors(method: ContextEncoder, images: torch.Tensor) -> tuple[float, float]:
    """Weighted L2 over the region of the inpainting, and of filling the region with each image's mean context."""
    region = method.regions(images)
    hole, weights = border_weights(region, overlap=method.overlap, weight=method.overlap_weight)
    with torch.no_grad():
        pred = method.inpaint(images, hole)
    context = (~region).float()
    mean = (images * context).sum((2, 3), keepdim=True) / context.sum((2, 3), keepdim=True)  # (B, C, 1, 1)
    flat = mean.expand_as(images)
    return (float(method.reconstruction_loss(pred, images, weights)),
            float(method.reconstruction_loss(flat, images, weights)))


@pytest.mark.slow
@pytest.mark.parametrize("adversarial", [True, False])
def test_context_encoder_learns_upright_objects(adversarial: bool) -> None:
    method = ContextEncoder(vit(), adversarial=adversarial, disc_width=16, decoder_depth=2, decoder_dim=64,
                            decoder_heads=4)
    r = learn(method, None, steps=200, lr=2e-3, batch_size=32)
    x, _ = upright_objects(1280, generator=torch.Generator().manual_seed(0))
    rec, flat = _held_out_errors(method, PROBE_SPEC.normalize(x[1024:]))
    print(f"\nContext encoder ({'joint' if adversarial else 'L2 only'}): loss {r['first']:.3f} -> {r['last']:.3f} "
          f"({r['secs']:.1f}s); held-out region L2 {rec:.3f} vs mean-context fill {flat:.3f}; k-NN top-1 trained "
          f"{r['trained']:.1f}% vs random init {r['random']:.1f}%, linear probe {r['linear']:.1f}% vs "
          f"{r['linear_random']:.1f}%")
    # the k-NN is printed, not asserted: inpainting must carry each image's colours, and they dominate the cosine
    # neighbours (measured at random init level); a linear probe finds the shape in the same features
    # filling the region with the context's mean scores `flat`: the inpainting must halve it (not re-measured with
    # these comments; the test prints it). README's short run: linear 50.8 vs 37.9, a margin of 12.9 points
    assert rec < 0.5 * flat
    assert r["linear"] > r["linear_random"] + 8.0


def test_recipe_writes_the_inpainting_figure_when_asked(tmp_path) -> None:
    from figure_runs import figures_of

    (png,) = figures_of("image/context_encoder_tiny", tmp_path)
    with Image.open(png) as img:  # input with the hole, inpainting, original; 2 samples at 2x
        assert img.format == "PNG" and img.size == (3 * 96, 2 * 96)


@pytest.mark.parametrize("decoder_depth", [0, 1])
def test_forward_cnn(decoder_depth: int) -> None:
    from mmssl.models.cnn import CNNEncoder

    encoder = CNNEncoder("resnet10t", modality={"name": "image", "patch": [8, 8], "size": [64, 64]})
    method = ContextEncoder(encoder, disc_width=8, decoder_depth=decoder_depth, decoder_dim=32, decoder_heads=4)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = method({"image": encoder.modality.tokenize(encoder.modality.normalize(images))})
    out.loss.backward()
    assert torch.isfinite(out.loss) and any(p.grad is not None for p in encoder.parameters())
    hole, _ = border_weights(method.regions(images), overlap=4)
    assert method.inpaint(images, hole).shape == images.shape
