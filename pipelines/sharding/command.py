"""The body of `mmssl shard`: parsed arguments -> a sharding run or a verification, one line per mistake.

The command's parser lives with the CLI (`mmssl.commands.shard`); what it runs lives here, with the sharding
tool, so the `mmssl` library imports nothing from the data pipelines (`mmssl.launch`).
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from pipelines.sharding.samples import Transcode
from pipelines.sharding.tool import ShardOptions, run_sharding
from pipelines.sharding.verify import verify_shards

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Shards `args.src` into `args.out` (or verifies `args.verify`); the exit code."""
    if args.verify:
        problems = verify_shards(Path(args.verify), progress=not args.quiet)
        for p in problems:
            print(p)
        print("verify: ok" if not problems else f"verify: {len(problems)} problem(s)")
        return 0 if not problems else 1
    if not (args.src and args.out):
        print("mmssl shard: error: SRC and OUT are required (or --verify OUT)", file=sys.stderr)
        return 2
    transcode = Transcode(enabled=args.transcode, short_side=args.short_side, fps=args.fps, gop=args.gop,
                          chunk_seconds=args.chunk_seconds, keep_audio=args.keep_audio,
                          image_short_side=args.image_short_side, audio_format=args.audio_format)
    opts = ShardOptions(modality=args.modality, samples_per_shard=args.samples_per_shard,
                        shard_bytes=int(args.shard_mb * 2**20) if args.shard_mb else None, prefix=args.prefix,
                        seed=None if args.no_shuffle else args.seed, workers=args.workers, part=args.part,
                        resume=args.resume, transcode=transcode)
    try:
        summary = run_sharding(Path(args.src), Path(args.out), opts, progress=not args.quiet)
    except ValueError as err:
        print(f"mmssl shard: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.ENOTDIR, errno.EISDIR):
            raise  # e.g. a missing source: the command's one-line error already
        where = err.filename or args.out
        print(f"mmssl shard: error: cannot write {where}: {err.strerror or err}; choose a writable OUT folder",
              file=sys.stderr)
        return 2
    if summary["complete"]:
        print(f"{summary['samples']} samples in {summary['shards']} shards ({summary['bytes'] / 2**20:.1f} MiB), "
              f"{summary['errors']} file(s) skipped (see {Path(args.out) / 'errors.jsonl'}); "
              f"built {summary['built']}, kept {summary['kept']}")
    else:
        print(f"part {args.part[0]}/{args.part[1]}: built {summary['built']}, kept {summary['kept']} of "
              f"{summary['shards']} shards; index.json is written when every part has finished "
              f"(rerun any part with --resume to write it)")
    return 0
