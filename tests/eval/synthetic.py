"""Synthetic propagation data: videos of moving coloured objects written in the DAVIS, VIP and JHMDB layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from mmssl.eval.outputs import palette

__all__ = ["scene", "write_davis", "write_vip", "write_jhmdb", "write_mat"]

COLOURS = np.array([[220, 40, 40], [40, 200, 60], [40, 80, 230], [230, 200, 40]], dtype=np.float64)


def scene(t: int, *, height: int = 96, width: int = 128, objects: int = 2,
          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Frame (H, W, 3) uint8 and label ids (H, W) at time t: striped discs drifting over a textured backdrop."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 2 * np.pi)
    frame = 110 + 25 * np.sin(xx / 9.0 + yy / 13.0 + phase)[..., None] * np.array([1.0, 0.6, 0.3])  # static texture
    labels = np.zeros((height, width), dtype=np.uint8)
    for k in range(objects):
        cx = width * (0.25 + 0.5 * k / max(1, objects - 1)) + 1.5 * t * (1 if k % 2 == 0 else -1)
        cy = height * 0.5 + 6 * np.sin(t / 5.0 + k)
        r = min(height, width) * 0.18
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        labels[inside] = k + 1
        # stripes that travel with the object, so there is something inside it to track
        shade = 0.7 + 0.3 * np.sin((xx - cx) / 2.5 + (yy - cy) / 4.0)
        frame[inside] = COLOURS[k % len(COLOURS)] * shade[inside][:, None]
    return frame.clip(0, 255).astype(np.uint8), labels


def _png(path: Path, labels: np.ndarray) -> None:
    img = Image.fromarray(labels, mode="P")
    img.putpalette(palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_davis(root: Path, names: tuple[str, ...] = ("seqa",), *, frames: int = 8, split: bool = True,
                **scene_kw) -> Path:
    """A DAVIS-2017 layout under `root` with one sequence per name (ground truth for every frame)."""
    for s, name in enumerate(names):
        for t in range(frames):
            frame, labels = scene(t, seed=s, **scene_kw)
            img_dir = root / "JPEGImages" / "480p" / name
            img_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame).save(img_dir / f"{t:05d}.jpg", quality=95)
            _png(root / "Annotations" / "480p" / name / f"{t:05d}.png", labels)
    if split:
        (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(names) + "\n")
    return root


def write_vip(root: Path, name: str = "videos1", *, frames: int = 6) -> Path:
    """A VIP layout: Images/<seq>/*.jpg and Annotations/Category_ids/<seq>/*.png."""
    for t in range(frames):
        frame, labels = scene(t, objects=3)
        (root / "Images" / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(root / "Images" / name / f"{t:06d}.jpg", quality=95)
        _png(root / "Annotations" / "Category_ids" / name / f"{t:06d}.png", labels * 5)  # part ids 5, 10, 15
    return root


def write_mat(path: Path, variables: dict[str, np.ndarray], *, compress: bool = False) -> None:
    """A minimal little-endian level-5 MAT-file writer (doubles and char arrays) for the reader's tests."""
    def element(kind: int, payload: bytes) -> bytes:
        if len(payload) <= 4 and kind != 14:  # small element form
            return (np.array([kind | (len(payload) << 16)], "<u4").tobytes() + payload.ljust(4, b"\0"))
        return np.array([kind, len(payload)], "<u4").tobytes() + payload + b"\0" * ((-len(payload)) % 8)

    body = b""
    for name, value in variables.items():
        if isinstance(value, str):
            cls, data = 4, element(4, np.array([ord(c) for c in value], "<u2").tobytes())
            dims = (1, len(value))
        else:
            arr = np.asarray(value, dtype=np.float64)
            cls, dims = 6, arr.shape
            data = element(9, arr.ravel(order="F").astype("<f8").tobytes())
        matrix = (element(6, np.array([cls, 0], "<u4").tobytes()) + element(5, np.array(dims, "<i4").tobytes())
                  + element(1, name.encode()) + data)
        item = element(14, matrix)
        if compress:
            import zlib
            packed = zlib.compress(item)
            item = np.array([15, len(packed)], "<u4").tobytes() + packed
        body += item
    header = b"MATLAB 5.0 MAT-file, written by mmssl tests".ljust(116, b" ") + b"\0" * 8
    path.write_bytes(header + np.array([0x0100], "<u2").tobytes() + b"IM" + body)


def write_jhmdb(root: Path, action: str = "walk", video: str = "v1", *, frames: int = 6, fmt: str = "mat") -> Path:
    """A JHMDB layout with 15 joints on the first object of the synthetic scene; `fmt` is mat, npy or json."""
    img_dir = root / "Rename_Images" / action / video
    img_dir.mkdir(parents=True, exist_ok=True)
    pos = np.zeros((2, 15, frames))
    for t in range(frames):
        frame, labels = scene(t, objects=1)
        Image.fromarray(frame).save(img_dir / f"{t + 1:05d}.png")
        ys, xs = np.nonzero(labels == 1)
        angle = np.linspace(0, 2 * np.pi, 15, endpoint=False)
        pos[0, :, t] = xs.mean() + 8 * np.cos(angle) + 1  # MATLAB 1-based pixels
        pos[1, :, t] = ys.mean() + 8 * np.sin(angle) + 1
    lab_dir = root / "joint_positions" / action / video
    lab_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "mat":
        write_mat(lab_dir / "joint_positions.mat", {"pos_img": pos, "viewpoint": "E"}, compress=True)
    elif fmt == "npy":
        np.save(lab_dir / "joint_positions.npy", pos)
    else:
        (lab_dir / "joint_positions.json").write_text(json.dumps({"pos_img": pos.tolist()}))
    return root
