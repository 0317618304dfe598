"""Audio-MAE: 80 % random masking, norm_pix loss on hidden patches, global and local decoders, spectrogram figure."""

import pytest
import torch
from learning import knn_top1, snapshot, tiny_encoder, tiny_spec, train
from PIL import Image

from mmssl.losses import masked_mse, norm_pix_target
from mmssl.methods.audiomae import AudioMAE
from mmssl.models import SelfAttentionDecoder, WindowDecoder
from mmssl.tokens import RandomMask, Tokens

SPEC = tiny_spec("audio", patch=(8, 8), size=(64, 32))  # (time, frequency) grid (8, 4)


def _method(**kwargs) -> AudioMAE:
    return AudioMAE(tiny_encoder(SPEC, depth=1, dim=32), decoder_dim=32, decoder_depth=2, decoder_heads=4, **kwargs)


def _tokens(b: int = 3) -> Tokens:
    return SPEC.tokenize(torch.randn(b, 1, 64, 32))


def test_mask_ratio_and_norm_pix_target() -> None:
    method = _method()
    tokens = method.masked(_tokens(4))
    assert tokens.visible.shape == (4, int(32 * (1 - 0.8)))
    t = tokens.patches
    mean = t.mean(-1, keepdim=True)
    var = ((t - mean) ** 2).sum(-1, keepdim=True) / (t.shape[-1] - 1)
    # float32 standardisation of 64 values, outputs ~ +-3: measured 4.8e-7
    assert torch.allclose(method.target(tokens), (t - mean) / (var + 1e-6).sqrt(), atol=1e-5)


@pytest.mark.parametrize("window", [None, (4, 4)])
def test_decoders_shapes_hidden_only_loss_and_gradients(window) -> None:
    method = _method(decoder_window=window)
    assert isinstance(method.decoder, WindowDecoder if window else SelfAttentionDecoder)
    tokens = method.masked(_tokens())
    pred = method.predict(tokens)
    assert pred.shape == (3, 32, 64)
    method({"audio": tokens}).loss.backward()
    assert method.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    fixed = pred.detach()
    method.predict = lambda t: fixed
    base = method({"audio": tokens}).loss
    bumped = fixed.clone()
    bumped[~tokens.mask] += 7.0
    method.predict = lambda t: bumped
    assert torch.allclose(method({"audio": tokens}).loss, base)  # visible cells do not count (measured exact)
    bumped[tokens.mask] += 1.0
    assert method({"audio": tokens}).loss > base


def test_local_decoder_drops_cls_and_shifts_time_only() -> None:
    method = AudioMAE(tiny_encoder(SPEC, depth=1, dim=32), decoder_window=(4, 4), decoder_depth=16)
    blocks = method.decoder.blocks
    assert len(blocks) == 16 and blocks[0].shift == (0, 0) and blocks[1].shift == (2, 0)
    tokens = method.masked(_tokens())
    enc = method.encoder(tokens)
    # the local decoder sees the patch tokens only: its output is that of the decoder without [CLS]
    # the same float32 ops (measured exact); 1e-6 (+ rtol 1e-5) allows another reduction order
    assert torch.allclose(method.predict(tokens), method.decoder(enc.tokens, enc.visible, enc.grid), atol=1e-6)
    glob = AudioMAE(tiny_encoder(SPEC, depth=1, dim=32))
    assert len(glob.decoder.blocks) == 8 and glob.masking.ratio == 0.8


def test_figure_writes_spectrogram_png(tmp_path) -> None:
    path = _method().figure({"audio": _tokens(2)}, tmp_path / "audiomae.png")
    with Image.open(path) as img:
        assert img.width > img.height  # time runs across: each panel is wider than tall


@pytest.mark.slow
def test_audiomae_learns_tones() -> None:
    from synthetic import tone_spectrograms

    torch.manual_seed(0)
    x, y = tone_spectrograms(1280, time=64, freq=32, generator=torch.Generator().manual_seed(0))
    x = (x - x.mean()) / (2 * x.std())  # dataset statistics, std x 2 as Audio-MAE
    tokens = SPEC.tokenize(x)
    n_train = 1024

    def part(index):
        return Tokens(patches=tokens.patches[index], grid=tokens.grid, patch=tokens.patch, modality="audio")

    method = AudioMAE(tiny_encoder(SPEC, depth=2, dim=64), decoder_dim=64, decoder_depth=2, decoder_heads=4,
                      decoder_window=(4, 4))
    random_init = snapshot(method.encoder)
    first, last, secs = train(method, lambda i: {"audio": part(i)}, n_train, steps=400, lr=1.5e-3)
    train_t, test_t = part(slice(0, n_train)), part(slice(n_train, None))
    with torch.no_grad():
        held = test_t.with_mask(RandomMask(0.8)(256, test_t.grid, generator=torch.Generator().manual_seed(1)))
        target = norm_pix_target(held.patches)
        err = float(masked_mse(method.predict(held), target, held.mask))
        base = float(masked_mse(torch.zeros_like(target), target, held.mask))
    trained = knn_top1(method.encoder, train_t, y[:n_train], test_t, y[n_train:])
    rand = knn_top1(random_init, train_t, y[:n_train], test_t, y[n_train:])
    print(f"\nAudio-MAE (local decoder): loss {first:.3f} -> {last:.3f} ({secs:.1f}s); held-out masked MSE "
          f"{err:.3f} vs patch mean {base:.3f}; k-NN top-1 trained {trained:.1f}% vs random init {rand:.1f}%")
    # `base` predicts each patch's mean: the decoder must do 10 % better (not re-measured with these comments; the test
    # prints it). README's short run: k-NN 100 vs 96.1 at random init
    assert err < 0.9 * base
    assert trained > rand  # the tone classes are easy: random features already reach ~96 %
