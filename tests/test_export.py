import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open

from mmssl.cli import main
from mmssl.modalities import get_modality
from mmssl.models import TokenEncoder
from mmssl.train.checkpoint import save_checkpoint


def _checkpoint(tmp_path: Path, encoder_cfg: dict) -> Path:
    from mmssl.config import instantiate

    encoder = instantiate(encoder_cfg)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))  # "trained" weights differ from a fresh init
    state = {"config": {"method": {"encoder": encoder_cfg}}, "model": {f"encoder.{k}": v for k, v in
                                                                      encoder.state_dict().items()}}
    save_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", state)
    return tmp_path / "run"


def test_timm_export_loads_in_timm_and_matches_features(tmp_path: Path) -> None:
    cfg = {"_component_": "mmssl.models.TokenEncoder", "name": "vit_tiny_patch16_224", "modality": "image"}
    run = _checkpoint(tmp_path, cfg)
    out = tmp_path / "enc.safetensors"
    assert main(["export", str(run), str(out)]) == 0
    model = timm.create_model("vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(out)))
    model.eval()
    ours = TokenEncoder("vit_tiny_patch16_224", modality="image").eval()
    from mmssl.export import encoder_from_checkpoint

    ours, _ = encoder_from_checkpoint(run)
    ours.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        theirs = model.forward_features(x)  # (B, 1 + 196, D) after the final norm
        mine = ours(get_modality("image").tokenize(x))
    # the same weights through timm's and our kernels, float32 over 12 blocks of width 192 with outputs up to ~5:
    # measured 3.1e-6; 1e-4 (+ allclose's rtol 1e-5) is ~30x
    assert torch.allclose(theirs[:, 0], mine.pooled, atol=1e-4)
    assert torch.allclose(theirs[:, 1:], mine.tokens, atol=1e-4)


def test_mmssl_export_keeps_spec_and_rejects_timm_for_video(tmp_path: Path) -> None:
    cfg = {"_component_": "mmssl.models.TokenEncoder", "name": "vit_tiny_patch16_224", "modality": "video",
           "depth": 1, "cls_token": False, "pos_embed": "sinusoid"}
    run = _checkpoint(tmp_path, cfg)
    assert main(["export", str(run), str(tmp_path / "v.safetensors"), "--format", "mmssl"]) == 0
    with safe_open(str(tmp_path / "v.safetensors"), "pt") as f:
        meta = f.metadata()
        assert json.loads(meta["modality"])["patch"] == [2, 16, 16] and "blocks.0.attn.qkv.weight" in f.keys()
    assert main(["export", str(run), str(tmp_path / "t.safetensors")]) == 2
    with pytest.raises(FileNotFoundError):
        from mmssl.export import export_encoder

        export_encoder(tmp_path / "nothing", tmp_path / "x.safetensors")
