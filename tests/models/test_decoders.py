import torch

from mmssl.models import CrossAttentionDecoder, SelfAttentionDecoder, WindowDecoder
from mmssl.models.attention import Attention
from mmssl.models.window import WindowBlock
from mmssl.tokens import RandomMask, visible_from_mask


def _visible(batch: int, grid, ratio: float = 0.75):
    return visible_from_mask(RandomMask(ratio)(batch, grid))


def test_self_attention_decoder_shapes_with_prefix() -> None:
    dec = SelfAttentionDecoder(48, 16 * 16 * 3, dim=32, depth=2, heads=4)
    vis = _visible(2, (4, 4))
    out = dec(torch.randn(2, vis.shape[1], 48), vis, (4, 4), prefix=torch.randn(2, 1, 48))
    assert out.shape == (2, 16, 768)


def test_self_attention_decoder_without_embed_bias() -> None:
    dec = SelfAttentionDecoder(48, 1536, dim=32, depth=1, heads=4, embed_bias=False, pos_embed="sinusoid")
    assert dec.queries.proj.bias is None
    vis = _visible(3, (2, 2, 2), 0.5)
    assert dec(torch.randn(3, 4, 48), vis, (2, 2, 2)).shape == (3, 8, 1536)


def test_mask_tokens_sit_at_hidden_cells() -> None:
    dec = SelfAttentionDecoder(8, 4, dim=8, depth=0, heads=2)
    vis = torch.tensor([[1, 2]])
    q = dec.queries(torch.zeros(1, 2, 8), vis, (2, 2))
    pos = dec.queries.positions((2, 2), q)
    # the same additions (measured exact): allclose's defaults
    assert torch.allclose(q[0, 0], dec.queries.mask_token[0, 0] + pos[0])
    assert torch.allclose(q[0, 1], dec.queries.proj.bias + pos[1])


def test_cross_attention_decoder_shapes_and_context_matters() -> None:
    dec = CrossAttentionDecoder(48, 768, dim=32, depth=2, heads=4, self_attention=True, self_depth=1)
    vis = _visible(2, (4, 4), 0.95 if False else 0.75)
    x = torch.randn(2, vis.shape[1], 48)
    ctx = torch.randn(2, 16, 48)
    a = dec(x, vis, (4, 4), ctx)
    b = dec(x, vis, (4, 4), ctx + 1)
    assert a.shape == (2, 16, 768) and not torch.allclose(a, b)  # measured 0.68 apart, not rounding
    pos = torch.zeros(1, 5, 32)
    assert dec(x, vis, (4, 4), torch.randn(2, 5, 48), context_pos=pos).shape == (2, 16, 768)


def test_window_decoder_shapes_on_audio_grid() -> None:
    dec = WindowDecoder(48, 256, dim=32, depth=2, heads=4, window=(4, 4), shift=(2, 0))
    vis = _visible(2, (8, 8), 0.8)
    assert dec.blocks[0].shift == (0, 0) and dec.blocks[1].shift == (2, 0)
    assert dec(torch.randn(2, vis.shape[1], 48), vis, (8, 8)).shape == (2, 64, 256)


def _brute_window_attention(block: WindowBlock, x: torch.Tensor, grid) -> torch.Tensor:
    """Full attention over the (rolled) grid with everything outside a token's window masked out."""
    h, w = grid
    (wh, ww), (sh, sw) = block.window, block.shift
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    # position of each rolled-grid cell, and the original cell that lands there
    src_r, src_c = (rows + sh) % h, (cols + sw) % w
    win = (rows // wh) * (w // ww) + cols // ww
    # region id from the original coordinates: cells wrapped around by the roll form their own regions
    wrapped_r = (rows >= h - sh) if sh else torch.zeros_like(rows, dtype=torch.bool)
    wrapped_c = (cols >= w - sw) if sw else torch.zeros_like(cols, dtype=torch.bool)
    region = wrapped_r.long() * 2 + wrapped_c.long()
    win, region = win.flatten(), region.flatten()
    allowed = (win[:, None] == win[None, :]) & (region[:, None] == region[None, :])
    rel_r = (rows.flatten() % wh)[:, None] - (rows.flatten() % wh)[None, :]
    rel_c = (cols.flatten() % ww)[:, None] - (cols.flatten() % ww)[None, :]
    index = (rel_r + wh - 1) * (2 * ww - 1) + (rel_c + ww - 1)
    bias = block.rel_bias[index].permute(2, 0, 1)  # (heads, N, N)
    bias = bias.masked_fill(~allowed, float("-inf"))
    b, n, d = x.shape
    y = block.norm1(x).reshape(b, h, w, d)[:, src_r, src_c].reshape(b, n, d)  # rolled grid
    out = block.attn(y, bias=bias.unsqueeze(0))
    back = torch.empty_like(out.reshape(b, h, w, d))
    back[:, src_r, src_c] = out.reshape(b, h, w, d)
    z = x + back.reshape(b, n, d)
    return z + block.mlp(block.norm2(z))


def test_window_block_equals_masked_full_attention() -> None:
    for shift in [(0, 0), (2, 0), (2, 2)]:
        block = WindowBlock(16, 2, window=(4, 4), shift=shift)
        with torch.no_grad():
            block.rel_bias.normal_()
        x = torch.randn(2, 8 * 8, 16)
        # windowed vs masked full attention: the same float32 sums except over masked (zero) weights; outputs up to
        # ~4, so 1e-5 (+ allclose's rtol 1e-5) is ~100 ulps (measured exact)
        assert torch.allclose(block(x, (8, 8)), _brute_window_attention(block, x, (8, 8)), atol=1e-5), shift


def test_attention_matches_written_out_softmax() -> None:
    attn = Attention(8, 2)
    x, ctx = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    q = attn.q(x).reshape(1, 3, 2, 4).transpose(1, 2)
    k, v = attn.kv(ctx).reshape(1, 5, 2, 2, 4).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    expect = attn.proj((weights @ v).transpose(1, 2).reshape(1, 3, 8))
    # float32 over 4-dim heads and 5 keys, outputs ~0.3: a few ulps (measured 1.5e-8)
    assert torch.allclose(attn(x, ctx), expect, atol=1e-6)
