"""Split-brain autoencoder: each sub-network sees only its half of the Lab channels; bins; concatenated features."""

import torch
from learning import tiny_encoder, tiny_spec

from mmssl.color import rgb_to_lab
from mmssl.methods.splitbrain import SplitBrain

SPEC = tiny_spec("image", patch=(8, 8), size=(32, 32))


def test_halves_see_only_their_channels_and_features_concatenate() -> None:
    method = SplitBrain(tiny_encoder(SPEC, depth=1, dim=32))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    lab = rgb_to_lab(x)
    other = lab.clone()
    other[:, 1:] = torch.randn(2, 2, 32, 32) * 20  # new colours, same lightness
    a1, b1 = method.encoder.halves(lab)
    a2, b2 = method.encoder.halves(other)
    assert torch.allclose(a1.tokens, a2.tokens, atol=1e-5) and not torch.allclose(b1.tokens, b2.tokens)
    tokens = SPEC.tokenize(SPEC.normalize(x))
    feats = method.encoder(tokens)
    assert feats.tokens.shape == (2, 16, 64) and method.encoder.dim == 64
    ab_t, l_t = method.targets(lab)
    assert ab_t.shape == l_t.shape == (2, 8, 8) and int(ab_t.max()) < 313 and int(l_t.max()) < 100
    out = method({"image": tokens})
    out.loss.backward()
    assert torch.isclose(out.loss, out.logs["loss_ab"] + out.logs["loss_l"])
    assert method.encoder.ab_net.patch_embed.proj.weight.grad is not None
