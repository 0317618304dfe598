"""What to shard: a folder tree, a CSV/JSONL manifest, or a DAVIS-style evaluation folder, as a list of items.

Each item is one future sample: a main media file, optional extra files stored beside it (depth and semantic
maps for multimodal data, frames and masks of an evaluation sequence), a label and a speaker id. The listing is
sorted, so every machine that plans the same input gets the same items in the same order.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Item", "list_items", "sample_key", "MEDIA_SUFFIXES"]

MEDIA_SUFFIXES = {
    "image": {".jpg", ".jpeg", ".png", ".bmp", ".webp"},
    "video": {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"},
    "audio": {".flac", ".wav", ".mp3", ".ogg", ".m4a", ".opus"},
}
MEDIA_SUFFIXES["multimodal"] = MEDIA_SUFFIXES["image"]
_EXTRA_COLUMNS = ("depth", "semseg")


@dataclass(frozen=True)
class Item:
    """One sample to write.

    Attributes:
        path: the main media file.
        rel: its path relative to the source root (hashed into the sample key; recorded as `source`).
        label: class index, or None when unlabelled.
        extras: extension -> file stored beside the main file (e.g. "depth.png" -> path).
        speaker: speaker id for audio, or None.
    """

    path: Path
    rel: str
    label: int | None = None
    extras: tuple[tuple[str, Path], ...] = field(default_factory=tuple)
    speaker: str | None = None


def sample_key(rel: str, chunk: int | None = None) -> str:
    """A dot-free key: a hash of the relative path (plus the chunk number for split videos)."""
    key = hashlib.sha1(rel.encode()).hexdigest()[:20]
    return key if chunk is None else f"{key}_c{chunk:03d}"


def list_items(src: Path, modality: str) -> tuple[list[Item], list[str]]:
    """Lists the items under `src` and the class names (index = label).

    `src` may be a folder (class sub-folders become labels; files directly in it are unlabelled), a `.csv` or
    `.jsonl` manifest, or a DAVIS-style folder (`JPEGImages/` and `Annotations/`), which becomes one sample per
    sequence.
    """
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"shard source not found: {src}")
    if src.is_file():
        if src.suffix.lower() not in (".csv", ".jsonl"):
            raise ValueError(f"{src}: a manifest must be .csv or .jsonl")
        return _from_manifest(src)
    if (src / "JPEGImages").is_dir() and (src / "Annotations").is_dir():
        return _from_davis(src), []
    if modality not in MEDIA_SUFFIXES:
        raise ValueError(f"unknown modality {modality!r}; choose one of {sorted(MEDIA_SUFFIXES)}")
    return _from_folder(src, MEDIA_SUFFIXES[modality])


def _from_folder(root: Path, suffixes: set[str]) -> tuple[list[Item], list[str]]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    index = {name: i for i, name in enumerate(classes)}
    items = []
    for p in files:
        parts = p.relative_to(root).parts
        label = index[parts[0]] if len(parts) > 1 else None
        items.append(Item(path=p, rel=p.relative_to(root).as_posix(), label=label))
    return items, classes


def _rows(manifest: Path) -> list[dict]:
    text = manifest.read_text()
    if manifest.suffix.lower() == ".csv":
        return list(csv.DictReader(text.splitlines()))
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{manifest}:{n}: not valid JSON: {err}") from None
    return rows


def _from_manifest(manifest: Path) -> tuple[list[Item], list[str]]:
    rows = _rows(manifest)
    base = manifest.parent
    names = sorted({str(r["label"]) for r in rows if r.get("label") not in (None, "") and
                    not str(r["label"]).lstrip("-").isdigit()})
    index = {name: i for i, name in enumerate(names)}
    items = []
    for n, row in enumerate(rows, 1):
        if not row.get("path"):
            raise ValueError(f"{manifest}: row {n} has no 'path'")
        path = (base / row["path"]).resolve() if not Path(row["path"]).is_absolute() else Path(row["path"])
        raw = row.get("label")
        label = None if raw in (None, "") else (int(raw) if str(raw).lstrip("-").isdigit() else index[str(raw)])
        extras = tuple((f"{col}.png", (base / row[col]).resolve()) for col in _EXTRA_COLUMNS if row.get(col))
        speaker = str(row["speaker"]) if row.get("speaker") not in (None, "") else None
        items.append(Item(path=path, rel=str(row["path"]), label=label, extras=extras, speaker=speaker))
    return items, names


def _from_davis(root: Path) -> list[Item]:
    frames_root = next((root / "JPEGImages").glob("*/"), root / "JPEGImages")  # e.g. JPEGImages/480p
    masks_root = root / "Annotations" / frames_root.name if frames_root != root / "JPEGImages" else \
        root / "Annotations"
    items = []
    for seq in sorted(p for p in frames_root.iterdir() if p.is_dir()):
        frames = sorted(seq.glob("*.jpg"))
        if not frames:
            raise ValueError(f"{seq}: sequence has no frames")
        extras = [(f"frame{i:05d}.jpg", f) for i, f in enumerate(frames)]
        for mask in sorted((masks_root / seq.name).glob("*.png")):
            extras.append((f"mask{int(mask.stem):05d}.png" if mask.stem.isdigit() else f"mask_{mask.stem}.png",
                           mask))
        items.append(Item(path=seq, rel=seq.relative_to(root).as_posix(), extras=tuple(extras)))
    return items
