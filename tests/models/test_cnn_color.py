import pytest
import torch

from mmssl.color import lab_to_rgb, rgb_to_lab
from mmssl.modalities import get_modality
from mmssl.models.cnn import CNNEncoder


def test_cnn_encoder_reads_tokens_and_tensors() -> None:
    enc = CNNEncoder("resnet18", output_stride=8)
    x = torch.randn(2, 3, 64, 64)
    out = enc(get_modality("image").tokenize(x))
    assert out.tokens.shape == (2, 64, 512) and out.grid == (8, 8) and out.pooled.shape == (2, 512)
    assert torch.allclose(enc.forward_dense(x).flatten(2).transpose(1, 2), out.tokens)  # same forward: measured exact
    gray = CNNEncoder("resnet18", modality={"name": "depth"})
    assert gray(torch.randn(2, 1, 64, 64)).tokens.shape[-1] == 512
    with pytest.raises(ValueError, match="expects"):
        enc(torch.randn(1, 1, 32, 32))


def test_lab_known_values_and_round_trip() -> None:
    white, red = torch.ones(3, 1, 1), torch.tensor([1.0, 0.0, 0.0]).reshape(3, 1, 1)
    # white maps to the D65 white point (float64: 4e-6 off from its constants; measured exact in float32); red
    # against published values rounded to 0.01, whose white-point constants differ between sources in the 4th
    # digit (measured 0.004 off)
    assert torch.allclose(rgb_to_lab(white).flatten(), torch.tensor([100.0, 0.0, 0.0]), atol=1e-2)
    assert torch.allclose(rgb_to_lab(red).flatten(), torch.tensor([53.24, 80.09, 67.20]), atol=0.1)
    rgb = torch.rand(2, 3, 8, 8)
    # float32 round trip through cube roots and L in [0, 100]: a few tens of ulps of values <= 1 (measured 1.6e-6)
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-4)


def test_cnn_encoder_gives_dense_features_for_propagation() -> None:
    from mmssl.eval.encoders import dense_features

    feats = dense_features(CNNEncoder("resnet18", output_stride=8).eval())
    assert feats.stride == 8 and feats(torch.rand(1, 3, 64, 48)).shape == (1, 512, 8, 6)
