"""A small deterministic synthetic video dataset: textured shapes moving over a textured background.

The quickstart trains on it and evaluates label propagation on held-out sequences, so it needs what real video
has for these methods: objects whose appearance persists while they move (what a frame-to-frame model can learn),
occlusion, and exact per-frame instance masks. Training videos are written as H.264 MP4s in a folder; held-out
sequences in the DAVIS-2017 layout (JPEGImages/480p, Annotations/480p as palette PNGs, ImageSets/2017/val.txt).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["SyntheticVideos", "render_sequence", "write_dataset", "davis_palette"]


def davis_palette() -> list[int]:
    """The DAVIS palette (PASCAL VOC colour map), flattened for PIL: index 0 black, 1 red, 2 green, ..."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth colour field plus a stripe pattern of random orientation: (h, w, 3) float in [0, 1]."""
    coarse = rng.random((4, 4, 3))
    field = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)) / 255.0
    y, x = np.mgrid[0:h, 0:w]
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 10)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
    tint = rng.random(3)
    return np.clip(0.55 * field + 0.45 * stripes[..., None] * tint, 0, 1)


@dataclass(frozen=True)
class SyntheticVideos:
    """Settings of the dataset.

    Attributes:
        size: frame side in pixels (square frames).
        frames: frames per video.
        objects: moving objects per video.
        seed: master seed; video i uses seed + i.
        flicker: amplitude of a per-frame lighting change (gain 1 +- flicker and a colour cast), so that
            matching raw colours across frames is not enough to track.
        noise: std of per-pixel Gaussian noise (in [0, 1] units) added to every frame.
        speed: largest object speed in pixels per frame.
        pan: largest camera pan in pixels per frame.
        spin: largest object rotation in degrees per frame (shape and texture turn together), so that an
            object's pixels change over time as real objects' do, not only their place.
    """

    size: int = 96
    frames: int = 24
    objects: int = 2
    seed: int = 0
    flicker: float = 0.0
    noise: float = 0.0
    speed: float = 2.5
    pan: float = 1.0
    spin: float = 0.0


def render_sequence(cfg: SyntheticVideos, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 and instance masks (T, H, W) uint8 (0 = background, 1..K objects)."""
    rng = np.random.default_rng(cfg.seed * 100_003 + index)
    s = cfg.size
    margin = int(cfg.pan * cfg.frames / 2) + 1  # room for the pan: the background is larger than the frame
    background = _texture(rng, s + 2 * margin, s + 2 * margin)  # larger: the camera pans over it
    pan = rng.uniform(-cfg.pan, cfg.pan, 2)
    objects = []
    for k in range(cfg.objects):
        radius = rng.uniform(0.12, 0.22) * s
        objects.append(dict(pos=rng.uniform(radius, s - radius, 2), vel=rng.uniform(-cfg.speed, cfg.speed, 2), r=radius,
                            aspect=rng.uniform(0.6, 1.4), square=bool(rng.random() < 0.5),
                            tex=_texture(rng, s, s), id=k + 1, angle=0.0, omega=0.0))
    if cfg.spin:  # drawn after everything else, so that spin=0 leaves the sequences exactly as they were
        for ob in objects:
            ob["angle"], ob["omega"] = rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(-cfg.spin, cfg.spin))
    frames = np.zeros((cfg.frames, s, s, 3), np.uint8)
    masks = np.zeros((cfg.frames, s, s), np.uint8)
    y, x = np.mgrid[0:s, 0:s]
    for t in range(cfg.frames):
        off = np.clip(margin + pan * (t - cfg.frames / 2), 0, 2 * margin).astype(int)
        img = background[off[0]:off[0] + s, off[1]:off[1] + s].copy()
        mask = np.zeros((s, s), np.uint8)
        for ob in objects:  # later objects are in front: occlusion
            cy, cx = ob["pos"]
            # object coordinates: centred on the object and turned by its angle
            cos, sin = np.cos(ob["angle"]), np.sin(ob["angle"])
            oy, ox = cos * (y - cy) - sin * (x - cx), sin * (y - cy) + cos * (x - cx)
            dy, dx = oy / (ob["r"] * ob["aspect"]), ox / ob["r"]
            inside = (np.maximum(abs(dy), abs(dx)) < 1) if ob["square"] else (dy ** 2 + dx ** 2 < 1)
            # the texture moves and turns with the object: sample it in object coordinates
            ty = np.clip((oy + s // 2).astype(int), 0, s - 1)
            tx = np.clip((ox + s // 2).astype(int), 0, s - 1)
            img[inside] = ob["tex"][ty[inside], tx[inside]]
            mask[inside] = ob["id"]
            ob["pos"] = ob["pos"] + ob["vel"]
            ob["angle"] += ob["omega"]
            for a in range(2):  # bounce off the borders
                if not ob["r"] <= ob["pos"][a] <= s - ob["r"]:
                    ob["vel"][a] *= -1
        if cfg.flicker:  # lighting: a random gain per frame and a small colour cast, like auto-exposure
            img = img * (1 + cfg.flicker * rng.uniform(-1, 1)) + cfg.flicker * 0.3 * rng.uniform(-1, 1, 3)
        if cfg.noise:
            img = img + rng.normal(0, cfg.noise, img.shape)
        frames[t] = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        masks[t] = mask
    return frames, masks


def _write_mp4(path: Path, frames: np.ndarray, fps: int = 12) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.gop_size = 8
        stream.options = {"crf": "18", "preset": "veryfast", "bf": "0", "sc_threshold": "0"}
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())


def write_dataset(root: Path, *, train: int = 64, val: int = 4, cfg: SyntheticVideos = SyntheticVideos(),
                  progress: bool = True) -> tuple[Path, Path]:
    """Writes `train` videos to root/videos/*.mp4 and `val` DAVIS-style sequences to root/davis.

    Returns (video folder, DAVIS root). Held-out sequences use other seeds than the training videos.
    """
    from tqdm import tqdm

    root = Path(root)
    videos, davis = root / "videos", root / "davis"
    videos.mkdir(parents=True, exist_ok=True)
    palette = davis_palette()
    names = []
    for i in tqdm(range(train + val), desc="synthetic videos", unit="video", disable=not progress):
        frames, masks = render_sequence(cfg, i)
        if i < train:
            _write_mp4(videos / f"video{i:04d}.mp4", frames)
            continue
        name = f"seq{i - train:03d}"
        names.append(name)
        img_dir, ann_dir = davis / "JPEGImages" / "480p" / name, davis / "Annotations" / "480p" / name
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        for t, (f, m) in enumerate(zip(frames, masks)):
            Image.fromarray(f).save(img_dir / f"{t:05d}.jpg", quality=95)
            png = Image.fromarray(m, mode="P")
            png.putpalette(palette)
            png.save(ann_dir / f"{t:05d}.png")
    (davis / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (davis / "ImageSets" / "2017" / "val.txt").write_text("\n".join(names) + "\n")
    return videos, davis
