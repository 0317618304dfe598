"""checkpoint_blocks: same loss and gradients, the blocks recomputed in the backward pass, state dict unchanged."""

from __future__ import annotations

import copy

import torch

from mmssl.methods.mae import MAE
from mmssl.models import TokenEncoder
from mmssl.tokens import Tokens, patchify
from mmssl.train.recompute import checkpoint_blocks


def tiny_mae() -> MAE:
    torch.manual_seed(0)
    encoder = TokenEncoder("vit_tiny_patch16_224", depth=2)
    return MAE(encoder, decoder_dim=32, decoder_depth=2, decoder_heads=2)


def batch() -> dict:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    patches, grid = patchify(x, 16)
    visible = torch.tensor([[0], [3]])
    return {"image": Tokens(patches, grid, (16, 16), "image", visible=visible)}


def loss_and_grads(model: MAE) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(batch()).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_checkpointed_blocks_give_the_same_loss_and_gradients():
    plain, wrapped = tiny_mae(), tiny_mae()
    assert checkpoint_blocks(wrapped) == 4  # 2 encoder + 2 decoder blocks
    assert checkpoint_blocks(wrapped) == 0  # already wrapped
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    (l1, g1), (l2, g2) = loss_and_grads(plain), loss_and_grads(wrapped)
    # recomputation runs the same kernels on the same inputs (measured bit-exact): default float32 tolerances
    torch.testing.assert_close(l1, l2)
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], msg=name)


def test_checkpointed_blocks_run_again_in_the_backward_pass():
    model = tiny_mae()
    checkpoint_blocks(model)
    calls = []
    # a pre-hook: the recomputation stops as soon as the last saved tensor is made again, before modules return
    model.decoder.blocks[0].mlp.register_forward_pre_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    loss = model(batch()).loss
    assert len(calls) == 1
    loss.backward()
    assert len(calls) == 2  # recomputed for the gradients
    with torch.no_grad():
        model(batch())
    assert len(calls) == 3  # evaluation runs each block once


def test_a_copied_checkpointed_model_computes_with_its_own_weights():
    model = tiny_mae()
    checkpoint_blocks(model)
    twin = copy.deepcopy(model)  # EMA teachers are deep copies
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    assert not torch.allclose(model(batch()).loss, twin(batch()).loss)  # halved weights: a different loss
    fresh = tiny_mae()
    fresh.load_state_dict(twin.state_dict())
    torch.testing.assert_close(fresh(batch()).loss, twin(batch()).loss)  # the same weights and inputs: bit-exact
