"""Readers of the label-propagation benchmarks' folder layouts; every problem names the file at fault.

* DAVIS-2017: `JPEGImages/480p/<seq>/*.jpg`, `Annotations/480p/<seq>/*.png` (indexed palette PNGs, 255 = void),
  sequences from `ImageSets/2017/<split>.txt`, or every sequence folder when there is no split file.
* VIP: `Images/<seq>/*.jpg`, `Annotations/Category_ids/<seq>/*.png` (20 part classes), split
  `lists/<split>_videos.txt` when present.
* JHMDB: `Rename_Images/<action>/<video>/*.png` frames and `joint_positions/<action>/<video>/joint_positions.mat`
  (`pos_img`, 2 x 15 x T, 1-based pixels). Instead of the .mat file, `joint_positions.npy` (the same `pos_img`
  array) or `joint_positions.json` (`{"pos_img": [...]}`) is read too. A split file lists either
  "frames_dir label_file" pairs (CRW's `jhmdb_vallist.txt`) or `action/video` names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mmssl.eval.matfile import read_mat

__all__ = ["DataError", "Sequence", "read_davis", "read_vip", "read_jhmdb", "read_sequences", "load_frame", "load_mask",
           "read_keypoints"]

_FRAME_EXT = (".jpg", ".jpeg", ".png")


class DataError(ValueError):
    """A problem with a dataset file; the message starts with the file at fault."""


@dataclass(frozen=True)
class Sequence:
    """One video to propagate through.

    Attributes:
        name: sequence name (used for output folders and CSV rows).
        frames: frame image paths in temporal order.
        masks: per frame, its annotation PNG or None (segmentation tasks; empty for keypoints).
        keypoints: (T, J, 2) ground-truth (x, y) in 0-based pixels, or None.
    """

    name: str
    frames: tuple[Path, ...]
    masks: tuple[Path | None, ...] = ()
    keypoints: np.ndarray | None = None


def load_frame(path: Path) -> Tensor:
    """An RGB frame as a float tensor (3, H, W) in [0, 1]."""
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read frame: {err}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)  # (H, W, 3) -> (3, H, W)


def load_mask(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Label ids (H, W) uint8 of an indexed (palette) or grey PNG; `size` (H, W) is checked when given."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise DataError(f"{path}: annotation must be an indexed (palette) or grey PNG, got mode {img.mode}")
            mask = np.asarray(img).copy()
    except OSError as err:
        raise DataError(f"{path}: cannot read annotation: {err}") from None
    if size is not None and mask.shape != tuple(size):
        raise DataError(f"{path}: annotation is {mask.shape[1]}x{mask.shape[0]} but its frame is "
                         f"{size[1]}x{size[0]}")
    return mask


def _frame_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size[1], img.size[0]


def _list_frames(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"sequence folder not found: {folder}")
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in _FRAME_EXT)
    if not frames:
        raise DataError(f"{folder}: empty sequence (no .jpg/.png frames)")
    numbers = [int(p.stem) for p in frames if p.stem.isdigit()]
    if len(numbers) == len(frames):
        frames.sort(key=lambda p: int(p.stem))
        numbers.sort()
        for prev, cur in zip(numbers, numbers[1:]):
            if cur != prev + 1:
                width = len(frames[0].stem)
                raise DataError(f"{folder / (str(prev + 1).zfill(width) + frames[0].suffix)}: missing frame "
                                 f"(numbering jumps from {prev} to {cur})")
    return frames


def _segmentation_sequence(name: str, frame_dir: Path, mask_dir: Path) -> Sequence:
    frames = _list_frames(frame_dir)
    if not mask_dir.is_dir():
        raise FileNotFoundError(f"annotation folder not found: {mask_dir}")
    by_stem = {p.stem: p for p in mask_dir.glob("*.png")}
    stems = {f.stem for f in frames}
    for stem, path in sorted(by_stem.items()):
        if stem not in stems:
            raise DataError(f"{path}: annotation without a frame (missing {frame_dir / (stem + frames[0].suffix)})")
    if frames[0].stem not in by_stem:
        raise DataError(f"{mask_dir / (frames[0].stem + '.png')}: the first frame's annotation is missing")
    size = _frame_size(frames[0])
    load_mask(by_stem[frames[0].stem], size)  # checks the first annotation now, the others when they are scored
    return Sequence(name=name, frames=tuple(frames), masks=tuple(by_stem.get(f.stem) for f in frames))


def _split_names(split_file: Path | None, folder: Path) -> list[str]:
    if split_file is not None and split_file.is_file():
        names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        if not names:
            raise DataError(f"{split_file}: split file lists no sequences")
        return names
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not names:
        raise DataError(f"{folder}: no sequence folders")
    return names


def _resolution(folder: Path, resolution: str) -> Path:
    return folder / resolution if (folder / resolution).is_dir() else folder


def read_davis(root: str | Path, split: str | Path = "val", *, resolution: str = "480p") -> list[Sequence]:
    """DAVIS-2017 sequences (semi-supervised: the first frame's annotation is the input)."""
    root = Path(root)
    images = _resolution(root / "JPEGImages", resolution)
    annotations = _resolution(root / "Annotations", resolution)
    if not images.is_dir():
        raise FileNotFoundError(f"DAVIS frames folder not found: {root / 'JPEGImages'}")
    split_file = Path(split) if Path(split).suffix == ".txt" else root / "ImageSets" / "2017" / f"{split}.txt"
    return [_segmentation_sequence(n, images / n, annotations / n) for n in _split_names(split_file, images)]


def read_vip(root: str | Path, split: str | Path = "val") -> list[Sequence]:
    """VIP part-parsing sequences; frames without a part PNG are propagated but not scored."""
    root = Path(root)
    images, annotations = root / "Images", root / "Annotations" / "Category_ids"
    if not images.is_dir():
        raise FileNotFoundError(f"VIP frames folder not found: {images}")
    split_file = Path(split) if Path(split).suffix == ".txt" else root / "lists" / f"{split}_videos.txt"
    return [_segmentation_sequence(n, images / n, annotations / n) for n in _split_names(split_file, images)]


def read_keypoints(path: Path) -> np.ndarray:
    """JHMDB `pos_img` (2, J, T) from a .mat, .npy or .json file, as (T, J, 2) 0-based (x, y) pixels."""
    if not path.is_file():
        raise FileNotFoundError(f"keypoint file not found: {path}")
    if path.suffix == ".mat":
        try:
            variables = read_mat(path)
        except ValueError as err:
            raise DataError(str(err)) from None
        if "pos_img" not in variables:
            raise DataError(f"{path}: no variable 'pos_img' (found {', '.join(variables) or 'none'})")
        pos = np.asarray(variables["pos_img"], dtype=np.float64)
    elif path.suffix == ".npy":
        pos = np.load(path).astype(np.float64)
    elif path.suffix == ".json":
        try:
            pos = np.asarray(json.loads(path.read_text())["pos_img"], dtype=np.float64)
        except (ValueError, KeyError) as err:
            raise DataError(f"{path}: cannot read pos_img: {err!r}") from None
    else:
        raise DataError(f"{path}: keypoints must be a .mat, .npy or .json file")
    if pos.ndim != 3 or pos.shape[0] != 2:
        raise DataError(f"{path}: pos_img must be 2 x joints x frames, got shape {pos.shape}")
    return pos.transpose(2, 1, 0) - 1.0  # (2, J, T) -> (T, J, 2), MATLAB's 1-based pixels to 0-based


def _keypoint_file(folder: Path) -> Path:
    for ext in (".mat", ".npy", ".json"):
        if (folder / f"joint_positions{ext}").is_file():
            return folder / f"joint_positions{ext}"
    raise FileNotFoundError(f"keypoint file not found: {folder / 'joint_positions.mat'} (or .npy / .json)")


def _keypoint_sequence(name: str, frame_dir: Path, label: Path) -> Sequence:
    frames = _list_frames(frame_dir)
    keypoints = read_keypoints(label)
    if keypoints.shape[0] != len(frames):
        raise DataError(f"{label}: {keypoints.shape[0]} annotated frames but {frame_dir} holds {len(frames)}")
    return Sequence(name=name, frames=tuple(frames), keypoints=keypoints)


def read_jhmdb(root: str | Path, split: str | Path | None = None) -> list[Sequence]:
    """JHMDB sequences with their 15 joints; `split` is a list file (see the module docstring) or None for all."""
    root = Path(root)
    frames_root, labels_root = root / "Rename_Images", root / "joint_positions"
    split_file = None if split is None else (Path(split) if Path(split).is_file() else root / str(split))
    if split_file is not None and split_file.is_file():
        out = []
        for line in split_file.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2:  # CRW's "frames_dir label_file"
                frame_dir, label = Path(parts[0]), Path(parts[1])
                label = label if label.suffix else _keypoint_file(label)
                out.append(_keypoint_sequence(f"{frame_dir.parent.name}/{frame_dir.name}", frame_dir, label))
            elif parts:
                out.append(_keypoint_sequence(parts[0], frames_root / parts[0], _keypoint_file(labels_root / parts[0])))
        if not out:
            raise DataError(f"{split_file}: split file lists no sequences")
        return out
    if split is not None:
        raise FileNotFoundError(f"JHMDB split file not found: {split_file}")
    if not frames_root.is_dir():
        raise FileNotFoundError(f"JHMDB frames folder not found: {frames_root}")
    videos = sorted(p for p in frames_root.glob("*/*") if p.is_dir())
    if not videos:
        raise DataError(f"{frames_root}: no <action>/<video> folders")
    return [_keypoint_sequence(f"{v.parent.name}/{v.name}", v, _keypoint_file(labels_root / v.parent.name / v.name))
            for v in videos]


def read_sequences(task: str, root: str | Path, split: str | Path | None = None) -> list[Sequence]:
    """The sequences of a task ("davis", "jhmdb" or "vip") under `root`."""
    if task == "davis":
        return read_davis(root, split or "val")
    if task == "vip":
        return read_vip(root, split or "val")
    if task == "jhmdb":
        return read_jhmdb(root, split)
    raise DataError(f"unknown task {task!r}; choose davis, jhmdb or vip")

