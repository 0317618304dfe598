"""load_encoder from a checkpoint written here, and the dense-feature adapters."""

import pytest
import torch
from torch import nn

from mmssl.config import ConfigError
from mmssl.eval.encoders import CNNFeatures, PixelFeatures, ViTFeatures, dense_features, load_encoder
from mmssl.models.encoder import TokenEncoder

TINY = {"_component_": "mmssl.models.TokenEncoder", "name": "vit_tiny_patch16_224", "modality": "image",
        "depth": 1, "dim": 32, "heads": 2}


class Method(nn.Module):
    """Stands in for a pretraining method: an encoder plus parameters of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = TokenEncoder("vit_tiny_patch16_224", modality="image", depth=1, dim=32, heads=2)
        self.decoder = nn.Linear(32, 4)


def save_checkpoint(path, method: nn.Module, encoder_cfg=TINY) -> None:
    torch.save({"config": {"method": {"encoder": dict(encoder_cfg)}}, "model": method.state_dict()}, path)


def test_load_encoder_from_checkpoint(tmp_path) -> None:
    method = Method()
    save_checkpoint(tmp_path / "ckpt.pt", method)
    enc = load_encoder(tmp_path / "ckpt.pt")
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    # loaded weights and the features they give are bit-exact copies (measured): default float32 tolerances
    for (name, a), (_, b) in zip(method.encoder.state_dict().items(), enc.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    frames = torch.rand(2, 3, 32, 48)
    torch.testing.assert_close(ViTFeatures(enc)(frames), ViTFeatures(method.encoder.eval())(frames))
    fresh = load_encoder(None, TINY, seed=1)  # random init differs from the trained weights (made from seed 0)
    assert not torch.allclose(fresh.patch_embed.proj.weight, enc.patch_embed.proj.weight)
    twin = load_encoder(tmp_path / "ckpt.pt", random_init=True, seed=1)  # the checkpoint's architecture, seeded
    assert torch.equal(twin.patch_embed.proj.weight, fresh.patch_embed.proj.weight)


def test_load_encoder_errors_name_the_file(tmp_path) -> None:
    save_checkpoint(tmp_path / "ckpt.pt", Method(), {**TINY, "dim": 64, "heads": 2})
    with pytest.raises(ConfigError, match=r"ckpt\.pt: encoder weights do not fit"):
        load_encoder(tmp_path / "ckpt.pt")
    torch.save({"config": {}, "model": {"decoder.weight": torch.zeros(1)}}, tmp_path / "bare.pt")
    with pytest.raises(ConfigError, match=r"bare\.pt: no config\.method\.encoder"):
        load_encoder(tmp_path / "bare.pt")
    with pytest.raises(ConfigError, match=r"bare\.pt: no 'encoder\.\*' parameters"):
        load_encoder(tmp_path / "bare.pt", TINY)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_encoder(tmp_path / "missing.pt")
    assert load_encoder(None, TINY, overrides=["depth=2"]).depth == 2


def test_dense_adapters() -> None:
    vit = dense_features(load_encoder(None, TINY))
    assert isinstance(vit, ViTFeatures) and vit.stride == 16
    assert vit(torch.rand(1, 3, 64, 96)).shape == (1, 32, 4, 6)
    with pytest.raises(ValueError, match="multiple of the patch"):
        vit(torch.rand(1, 3, 60, 96))
    cnn = dense_features(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 4, stride=4)))
    assert isinstance(cnn, CNNFeatures) and cnn.stride == 4 and cnn(torch.rand(1, 3, 32, 40)).shape == (1, 8, 8, 10)
    pix = PixelFeatures(8)
    frames = torch.rand(1, 3, 16, 24)
    out = pix(frames)
    assert out.shape == (1, 3, 2, 3)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = ((frames[0, :, :8, :8].mean((1, 2)) - mean) / std)
    torch.testing.assert_close(out[0, :, 0, 0], expected)  # a float32 mean of 64 values in [0, 1]: an ulp or two
