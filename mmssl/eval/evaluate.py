"""Label-propagation evaluation of one task over its sequences: propagate, score, write the outputs.

DAVIS: per-object J and F on frames 1 .. T-2 (the first is given, the last is left out as the DAVIS scorer does).
VIP: a confusion matrix over every annotated frame after the first. JHMDB: PCK over every frame after the first.
Everything written or printed is in percent. `Result.summary` keeps DAVIS's J and F as the 0-1 fractions the
DAVIS toolkit reports (library callers compare them with `copy_first_frame`); `Result.percent()` converts.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence as Seq

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from mmssl.eval import metrics
from mmssl.eval.datasets import Sequence, load_frame, load_mask
from mmssl.eval.encoders import DenseFeatures
from mmssl.eval.labels import (encoder_size, grid_to_keypoints, grid_to_mask, keypoints_to_grid, mask_to_grid,
                               resize_frame)
from mmssl.eval.outputs import format_table, overlay_strip, write_csv, write_indexed_png
from mmssl.eval.presets import PropagationSettings
from mmssl.eval.propagation import propagate

__all__ = ["Result", "evaluate_propagation", "in_percent", "VIP_CLASSES"]

VIP_CLASSES = 20
STRIP_FRAMES = 6
FRACTIONS = ("J&F", "J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay")  # DAVIS, 0-1


def in_percent(row: dict) -> dict:
    """A row with DAVIS's 0-1 J and F figures in percent (PCK and mIoU are percent already)."""
    return {k: 100 * v if k in FRACTIONS and isinstance(v, float) else v for k, v in row.items()}


@dataclass
class Result:
    """Scores of a run: `summary` (dataset figures), `rows` (per sequence or object), frames per second."""

    summary: dict[str, float]
    rows: list[dict] = field(default_factory=list)
    frames_per_second: float = 0.0

    def percent(self) -> dict[str, float]:
        """`summary` with every figure in percent."""
        return in_percent(self.summary)


def _features(seq: Sequence, features: DenseFeatures, settings: PropagationSettings, device: torch.device,
              keep: set[int], shown: dict[int, np.ndarray]) -> Iterator[Tensor]:
    """Feature maps (D, h, w) of each frame, read and encoded one at a time; frames in `keep` are saved for figures."""
    for t, path in enumerate(seq.frames):
        frame = load_frame(path)
        if t in keep:
            shown[t] = (frame.permute(1, 2, 0) * 255).round().byte().numpy()  # (H, W, 3) for the overlay strip
        size = encoder_size(frame.shape[1], frame.shape[2], settings, features.stride)
        yield features(resize_frame(frame, size)[None].to(device))[0]


def _run_sequence(task: str, seq: Sequence, features: DenseFeatures, settings: PropagationSettings,
                  out_dir: Path, device: torch.device, state: dict) -> list[dict]:
    keep = set(np.linspace(0, len(seq.frames) - 1, min(STRIP_FRAMES, len(seq.frames))).round().astype(int).tolist())
    shown: dict[int, np.ndarray] = {}
    shown_labels: dict[int, np.ndarray] = {}
    feature_stream = _features(seq, features, settings, device, keep, shown)
    feats0 = next(feature_stream)  # the first frame fixes the grid and the image size
    grid, image = tuple(feats0.shape[-2:]), tuple(shown[0].shape[:2])
    if task == "jhmdb":
        ids: list[int] = []
        first = keypoints_to_grid(seq.keypoints[0], image, grid, settings.sigma)
    else:
        mask0 = load_mask(seq.masks[0], image)
        present = sorted(int(i) for i in np.unique(mask0) if i != metrics.VOID)
        if task == "davis":  # objects 1..max id of the first frame, as the DAVIS scorer counts them
            ids = list(range(0, max(present, default=0) + 1))
        else:
            ids = list(range(max(VIP_CLASSES, max(present, default=0) + 1)))
        first = mask_to_grid(mask0, ids, grid, settings.label_downsample)
        write_indexed_png(out_dir / seq.name / f"{seq.frames[0].stem}.png", mask0)
        shown_labels[0] = mask0
    last = len(seq.frames) - 1
    conf = np.zeros((VIP_CLASSES, VIP_CLASSES), dtype=np.int64)
    j_vals = {i: [] for i in ids[1:]}
    f_vals = {i: [] for i in ids[1:]}
    points = [seq.keypoints[0]] if task == "jhmdb" else []
    stream = propagate(itertools.chain([feats0], feature_stream), first.to(device), settings)
    bar = tqdm(stream, total=last, desc=seq.name, leave=False, unit="frame")
    for t, soft in enumerate(bar, start=1):
        if task == "jhmdb":
            points.append(grid_to_keypoints(soft, image, settings.keypoint_topk))
            continue
        pred = np.asarray(ids, dtype=np.uint8)[grid_to_mask(soft, image, settings.norm_mask).cpu().numpy()]
        write_indexed_png(out_dir / seq.name / f"{seq.frames[t].stem}.png", pred)
        if t in keep:
            shown_labels[t] = pred
        if seq.masks[t] is None:
            continue
        gt = load_mask(seq.masks[t], image)
        if task == "vip":
            conf = conf + metrics.confusion_matrix(gt, pred, len(ids))[:VIP_CLASSES, :VIP_CLASSES]
        elif t < last:
            void = gt == metrics.VOID
            for i in ids[1:]:
                j_vals[i].append(metrics.region_iou(gt == i, pred == i, void))
                f_vals[i].append(metrics.boundary_f(gt == i, pred == i, void))
    state["frames"] = state.get("frames", 0) + last
    keys = sorted(keep)
    kp = [points[t] for t in keys] if task == "jhmdb" else None
    strip = overlay_strip([shown[t] for t in keys], [shown_labels.get(t) for t in keys], keypoints=kp)
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip).save(out_dir / "overlays" / f"{seq.name.replace('/', '_')}.png")
    if task == "jhmdb":
        pred_pts, gt_pts = np.stack(points), seq.keypoints  # (T, J, 2) each
        (out_dir / seq.name).mkdir(parents=True, exist_ok=True)
        np.save(out_dir / seq.name / "keypoints.npy", pred_pts)
        state.setdefault("pred", []).append(pred_pts[1:])
        state.setdefault("gt", []).append(gt_pts[1:])
        return [{"sequence": seq.name, **metrics.pck(pred_pts[1:], gt_pts[1:])}]
    if task == "vip":
        state["conf"] = state.get("conf", 0) + conf
        return [{"sequence": seq.name, "mIoU": 100 * metrics.mean_iou(conf)[0]}]
    rows = []
    for i in ids[1:]:
        jm, jr, jd = metrics.davis_statistics(j_vals[i])
        fm, fr, fd = metrics.davis_statistics(f_vals[i])
        rows.append({"sequence": seq.name, "object": i, "J&F": (jm + fm) / 2, "J_mean": jm, "J_recall": jr,
                     "J_decay": jd, "F_mean": fm, "F_recall": fr, "F_decay": fd})
    return rows


def evaluate_propagation(task: str, sequences: Seq[Sequence], features: DenseFeatures,
                         settings: PropagationSettings, out_dir: str | Path, *,
                         device: str | torch.device = "cpu", verbose: bool = True) -> Result:
    """Propagates labels through every sequence, scores them and writes PNGs, CSVs and overlay strips.

    Args:
        task: "davis", "jhmdb" or "vip".
        sequences: the task's sequences (see `mmssl.eval.datasets`).
        features: dense feature adapter (frames in [0, 1] -> (B, D, h, w)).
        settings: propagation settings (e.g. a preset).
        out_dir: output folder; created.
        device: where features and propagation run.
        verbose: print the summary table.
    """
    out_dir, device = Path(out_dir), torch.device(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    state: dict = {}
    rows: list[dict] = []
    start = time.perf_counter()
    for seq in tqdm(sequences, desc=f"{task} sequences", unit="seq", disable=len(sequences) < 2):
        rows.extend(_run_sequence(task, seq, features, settings, out_dir, device, state))
    fps = state.get("frames", 0) / max(time.perf_counter() - start, 1e-9)
    if task == "davis":
        summary = {k: float(np.nanmean([r[k] for r in rows])) for k in
                   ("J&F", "J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay")} if rows else {}
        per_seq = [{"sequence": s, **{k: float(np.nanmean([r[k] for r in rows if r["sequence"] == s]))
                                      for k in ("J&F", "J_mean", "F_mean")}}
                   for s in dict.fromkeys(r["sequence"] for r in rows)]
        write_csv(out_dir / "per_object.csv", [in_percent(r) for r in rows])
        write_csv(out_dir / "per_sequence.csv", [in_percent(r) for r in per_seq])
    elif task == "vip":
        miou, per_class = metrics.mean_iou(state["conf"]) if "conf" in state else (float("nan"), np.array([]))
        summary = {"mIoU": 100 * miou}
        write_csv(out_dir / "per_class.csv", [{"class": c, "IoU": 100 * float(v)} for c, v in enumerate(per_class)])
        write_csv(out_dir / "per_sequence.csv", rows)
    else:
        pred, gt = np.concatenate(state.get("pred", [np.zeros((0, 15, 2))])), np.concatenate(
            state.get("gt", [np.zeros((0, 15, 2))]))
        summary = metrics.pck(pred, gt, (0.1, 0.2, 0.3, 0.4, 0.5))
        write_csv(out_dir / "per_sequence.csv", rows)
    write_csv(out_dir / "summary.csv", [{**in_percent(summary), "frames_per_second": fps}])
    if verbose:
        print(format_table([in_percent(r) for r in rows]))
        print(format_table([{"task": task, **in_percent(summary), "frames/s": fps}]))
    return Result(summary=summary, rows=rows, frames_per_second=fps)
