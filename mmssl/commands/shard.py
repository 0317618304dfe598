"""`mmssl shard SRC OUT --modality ...`: media folders or manifests -> WebDataset tar shards; `--verify OUT`."""

from __future__ import annotations

import argparse

from mmssl.launch import call


def _part(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--part must look like i/n, got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--part {text}: need 0 <= i < n")
    return i, n


def run(args: argparse.Namespace) -> int:
    return call("pipelines.sharding.command:run", args)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `mmssl shard`."""
    p = subparsers.add_parser("shard", help="write media folders or manifests as WebDataset tar shards",
                              description="Shard a folder tree (class sub-folders become labels), a CSV/JSONL "
                                          "manifest, or a DAVIS-style folder into tar shards with an index.")
    p.add_argument("src", nargs="?", help="folder, manifest (.csv/.jsonl) or DAVIS-style folder")
    p.add_argument("out", nargs="?", help="output folder")
    p.add_argument("--modality", default="image", choices=["image", "video", "audio", "multimodal"])
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--shard-mb", type=float, default=None, help="target shard size in MiB (instead of a count)")
    p.add_argument("--prefix", default="shard")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle that mixes items across shards")
    p.add_argument("--no-shuffle", action="store_true", help="keep the sorted order")
    p.add_argument("--workers", type=int, default=0, help="parallel processes (0: this process)")
    p.add_argument("--part", type=_part, default=(0, 1), help="i/n: build only this machine's share of shards")
    p.add_argument("--resume", action="store_true", help="keep finished shards of an interrupted run")
    p.add_argument("--transcode", action="store_true", help="re-encode media (otherwise bytes are stored as is)")
    p.add_argument("--short-side", type=int, default=256, help="video short side after transcoding")
    p.add_argument("--fps", type=float, default=None, help="constant frame rate (default: the source's)")
    p.add_argument("--gop", type=int, default=16, help="keyframe interval of transcoded video")
    p.add_argument("--chunk-seconds", type=float, default=None, help="split transcoded videos into chunks")
    p.add_argument("--keep-audio", action="store_true", help="keep a video's audio as mono 16 kHz FLAC")
    p.add_argument("--image-short-side", type=int, default=None, help="max short side of transcoded images")
    p.add_argument("--audio-format", choices=["flac", "wav"], default="flac",
                   help="transcoded audio: mono 16 kHz FLAC, or 16-bit PCM WAV (2x larger, read without decoding)")
    p.add_argument("--verify", metavar="OUT", help="re-read the shards in OUT against its index.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
