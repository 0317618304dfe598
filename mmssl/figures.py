"""Reconstruction figures for masked-modeling methods: one PNG, one row per sample (or per modality).

Each row has four panels, as in MAE's visualisation (He et al., 2022, Fig. 2): the input, what the encoder saw
(hidden patches grey, or the corrupted input for a denoising autoencoder), the prediction with the visible patches
pasted back, and the loss target. Rendering follows the modality spec: RGB is denormalised with the spec's
statistics, class maps get a fixed palette, video shows a few frames side by side, spectrograms are drawn with
time across and frequency up, anything else is scaled to its own range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from mmssl.modalities import Modality
from mmssl.tokens import Tokens, unpatchify

__all__ = ["Row", "rows_from_tokens", "save_reconstruction", "masked_reconstruction_figure"]

GREY = 0.5  # shade of hidden patches
SPECTROGRAMS = ("audio",)  # modalities drawn as spectrograms: (time, frequency) grids, frequency upwards
HEADERS = ("input", "encoder input", "prediction", "target")


@dataclass(frozen=True)
class Row:
    """The panels of one figure row, all as patches of one sample on one grid.

    Attributes:
        modality: the spec the patches belong to (sets how they are drawn).
        grid: token grid.
        patch: patch extent per axis.
        input: the input patches (N, P) as the encoder receives them (normalised; class ids for class maps).
        mask: (N,) True where a token was hidden from the encoder.
        prediction: the prediction (N, P) in the same space as `input`; visible cells are replaced by the input.
        target: the loss target (N, P) when it differs from `input` (e.g. per-patch normalised); None otherwise.
        seen: what the encoder saw (N, P) when it is not simply the input with hidden patches (denoising).
        spectrogram: draw a (time, frequency) grid with frequency on the vertical axis (`rows_from_tokens` sets
            it for the modalities in `SPECTROGRAMS`).
    """

    modality: Modality
    grid: tuple[int, ...]
    patch: tuple[int, ...]
    input: Tensor
    mask: Tensor
    prediction: Tensor
    target: Tensor | None = None
    seen: Tensor | None = None
    spectrogram: bool = False


def _palette(num_classes: int) -> Tensor:
    """A fixed colour per class (C, 3) in [0, 1], from a seeded generator so figures are comparable."""
    gen = torch.Generator().manual_seed(12345)
    return torch.rand(num_classes, 3, generator=gen) * 0.8 + 0.2


def _dense(row: Row, patches: Tensor) -> Tensor:
    """(N, P) patches -> (C, *S) dense tensor."""
    return unpatchify(patches.unsqueeze(0).float(), row.grid, row.patch)[0]


def _to_rgb(row: Row, patches: Tensor, hidden: Tensor | None, *, own_range: bool,
            value_range: tuple[float, float] | None) -> Tensor:
    """Renders one panel to an RGB image (3, H, W) in [0, 1]; hidden cells grey."""
    m = row.modality
    if m.categorical:
        colours = _palette(m.num_classes)
        ids = _dense(row, patches).long().clamp(0, m.num_classes - 1)[0]  # (*S)
        img = colours[ids].movedim(-1, 0)  # (3, *S)
    else:
        x = _dense(row, patches)  # (C, *S)
        if m.channels == 3 and m.mean is not None and not own_range:
            img = m.denormalize(x.unsqueeze(0))[0].clamp(0, 1)
        else:
            lo, hi = value_range if value_range is not None and not own_range else (x.min(), x.max())
            img = ((x - lo) / max(float(hi - lo), 1e-6)).clamp(0, 1)
        if img.shape[0] != 3:
            img = img[:1].expand(3, *img.shape[1:])  # grey levels of the first channel
    if hidden is not None:
        volume = math.prod(row.patch)
        per_value = hidden.reshape(1, -1, 1).float().expand(1, -1, volume)  # (1, N, V): one channel per cell
        cells = unpatchify(per_value, row.grid, row.patch)[0]  # (1, *S), 1 where the cell was hidden
        img = torch.where(cells.bool(), torch.full_like(img, GREY), img)
    return _layout(row, img)


def _layout(row: Row, img: Tensor) -> Tensor:
    """(3, *S) -> (3, H, W): video frames side by side (at most 4), spectrograms with frequency upwards."""
    if img.dim() == 4:  # (3, T, H, W)
        t = img.shape[1]
        picks = sorted({round(i * (t - 1) / 3) for i in range(4)}) if t > 1 else [0]
        frames = [img[:, i] for i in picks]
        gap = torch.ones(3, img.shape[2], 1)
        parts = [p for f in frames for p in (f, gap)][:-1]
        return torch.cat(parts, dim=2)  # (3, H, picks*W + gaps)
    if row.spectrogram:
        return img.transpose(1, 2).flip(1)  # (3, F, T), low frequencies at the bottom
    return img


def _panels(row: Row) -> list[Tensor]:
    hidden = row.mask.bool()
    keep = (~hidden).unsqueeze(-1)
    pasted = torch.where(keep, row.input.to(row.prediction.dtype), row.prediction)  # visible cells from the input
    x = row.input.float()
    rng = (float(x.min()), float(x.max()))
    seen = row.seen if row.seen is not None else row.input
    return [
        _to_rgb(row, row.input, None, own_range=False, value_range=rng),
        _to_rgb(row, seen, hidden if row.seen is None else None, own_range=False, value_range=rng),
        _to_rgb(row, pasted, None, own_range=False, value_range=rng),
        _to_rgb(row, row.input if row.target is None else row.target, None,
                own_range=row.target is not None, value_range=rng),
    ]


def _upscale(img: Tensor, min_side: int) -> Image.Image:
    arr = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).contiguous().numpy()  # (H, W, 3)
    pil = Image.fromarray(arr)
    scale = max(1, -(-min_side // min(pil.size)))
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)


def save_reconstruction(rows: list[Row], path: str | Path, *, min_side: int = 96) -> Path:
    """Writes the rows as a PNG grid (rows x 4 panels) with a header line; returns the path."""
    if not rows:
        raise ValueError(f"no rows to draw into {path}")
    images = [[_upscale(p, min_side) for p in _panels(r)] for r in rows]
    widths = [max(row[c].width for row in images) for c in range(4)]
    heights = [max(p.height for p in row) for row in images]
    pad, header = 4, 14
    canvas = Image.new("RGB", (sum(widths) + pad * 5, sum(heights) + pad * (len(rows) + 1) + header), "white")
    draw = ImageDraw.Draw(canvas)
    x = pad
    for c, name in enumerate(HEADERS):
        draw.text((x, 2), name, fill="black")
        x += widths[c] + pad
    y = header + pad
    for row, h in zip(images, heights):
        x = pad
        for c, panel in enumerate(row):
            canvas.paste(panel, (x, y))
            x += widths[c] + pad
        y += h + pad
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def rows_from_tokens(tokens: Tokens, prediction: Tensor, *, modality: Modality, target: Tensor | None = None,
                     seen: Tensor | None = None, samples: int = 4) -> list[Row]:
    """One `Row` per sample (the first `samples`) of a batch of tokens and its (B, N, P) prediction."""
    mask = tokens.mask
    spectrogram = modality.name in SPECTROGRAMS
    return [Row(modality=modality, grid=tokens.grid, patch=tokens.patch, input=tokens.patches[i].detach().cpu(),
                mask=mask[i].cpu(), prediction=prediction[i].detach().float().cpu(),
                target=None if target is None else target[i].detach().float().cpu(),
                seen=None if seen is None else seen[i].detach().float().cpu(), spectrogram=spectrogram)
            for i in range(min(samples, tokens.batch_size))]


@torch.no_grad()
def masked_reconstruction_figure(method, batch: dict, path: str | Path, *, samples: int = 4) -> Path:
    """The figure of a masked autoencoder with `masked`, `predict`, `target` and `norm_pix_loss` (MAE, Audio-MAE).

    Normalised-pixel predictions are mapped back with each patch's own statistics, so the figure shows pixels.
    """
    from mmssl.losses import from_norm_pix  # here, not at import: losses has no need of figures

    tokens = method.masked(batch[method.modality.name])
    pred = method.predict(tokens)
    shown = from_norm_pix(pred, tokens.patches) if method.norm_pix_loss else pred
    target = method.target(tokens) if method.norm_pix_loss else None
    rows = rows_from_tokens(tokens, shown, modality=method.modality, target=target, samples=samples)
    return save_reconstruction(rows, path)
