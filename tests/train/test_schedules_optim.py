import pytest
import torch

from mmssl.models import TokenEncoder
from mmssl.train.ema import ema_update_
from mmssl.train.optim import build_adamw, param_groups, scaled_lr, set_hyper
from mmssl.train.schedules import cosine_increase, linear, warmup_cosine


def test_warmup_cosine_values() -> None:
    # closed-form float64 schedules: approx's 1e-6 relative is far above their rounding (~1e-16)
    assert warmup_cosine(0.0, base=1.0, warmup=0.1) == 0.0
    assert warmup_cosine(0.05, base=1.0, warmup=0.1) == pytest.approx(0.5)
    assert warmup_cosine(0.1, base=1.0, warmup=0.1) == pytest.approx(1.0)
    assert warmup_cosine(0.55, base=1.0, final=0.0, warmup=0.1) == pytest.approx(0.5)
    assert warmup_cosine(1.0, base=1.0, final=1e-6, warmup=0.1) == pytest.approx(1e-6)
    with pytest.raises(ValueError, match="progress"):
        warmup_cosine(1.5, base=1.0)


def test_momentum_and_linear() -> None:
    # closed-form float64 schedules, as above: approx's 1e-6 relative against ~1e-16 rounding
    assert cosine_increase(0.0, base=0.996) == pytest.approx(0.996)
    assert cosine_increase(0.5, base=0.996) == pytest.approx(0.998)
    assert cosine_increase(1.0, base=0.996) == pytest.approx(1.0)
    assert linear(0.25, start=0.04, end=0.08) == pytest.approx(0.05)


def test_lr_scaling_rule() -> None:
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)  # blr * 4096 / 256 in float64: an ulp or so


def test_no_decay_on_norms_biases_tokens() -> None:
    enc = TokenEncoder("vit_tiny_patch16_224", modality="image", depth=1, dim=32, heads=2)
    decay, plain = param_groups(enc, weight_decay=0.05)
    names = {id(p): n for n, p in enc.named_parameters()}
    assert all(p.ndim == 2 for p in decay["params"])
    plain_names = {names[id(p)] for p in plain["params"]}
    assert "cls_token" in plain_names and "norm.weight" in plain_names and "blocks.0.attn.qkv.bias" in plain_names
    opt = build_adamw(enc, lr=1e-3, weight_decay=0.05)
    set_hyper(opt, lr=0.5, weight_decay=0.3)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.3, 0.0]
    assert all(g["lr"] == 0.5 for g in opt.param_groups) and opt.defaults["betas"] == (0.9, 0.95)


def test_ema_formula() -> None:
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.clone() for p in target.parameters()]
    ema_update_(target, online, 0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o)  # the formula in another float32 order: an ulp or two
