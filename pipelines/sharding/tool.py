"""`mmssl shard`: plan shards from a listing, build them in parallel, resume, split across machines, index.

The plan (which item goes into which shard) is a pure function of the sorted input listing and the options, so
every machine running `--part i/n` computes the same plan and builds a disjoint set of shards. A finished shard
is its tar plus a small record in OUT/.parts/; both appear only when the shard is complete, so `--resume` keeps
finished shards, rebuilds the rest and writes no sample twice. index.json and errors.jsonl are written once
every shard of the plan is finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from pipelines.sharding.samples import Transcode, build_samples
from pipelines.sharding.sources import Item, list_items
from pipelines.sharding.writer import TMP_MARK, ShardWriter

__all__ = ["ShardOptions", "plan_shards", "run_sharding", "PARTS_DIR"]

PARTS_DIR = ".parts"


@dataclass(frozen=True)
class ShardOptions:
    """How to shard.

    Attributes:
        modality: image, video, audio or multimodal.
        samples_per_shard: items per shard (used when `shard_bytes` is None).
        shard_bytes: target shard size in bytes, estimated from the input file sizes.
        prefix: shard file name prefix.
        seed: seed of the item shuffle that mixes classes across shards; None keeps the sorted order.
        workers: processes building shards (0 builds in this process).
        part: (i, n) builds only shards j with j % n == i.
        resume: keep finished shards of an earlier run with the same plan.
        transcode: transcoding options.
    """

    modality: str = "image"
    samples_per_shard: int = 1000
    shard_bytes: int | None = None
    prefix: str = "shard"
    seed: int | None = 0
    workers: int = 0
    part: tuple[int, int] = (0, 1)
    resume: bool = False
    transcode: Transcode = field(default_factory=Transcode)


def _size(item: Item) -> int:
    paths = [item.path] if item.path.is_file() else []
    return sum(p.stat().st_size for p in paths + [Path(e) for _, e in item.extras] if p.is_file())


def plan_shards(items: list[Item], opts: ShardOptions) -> list[list[int]]:
    """Item indices per shard: shuffled with `opts.seed`, cut by count or by estimated bytes."""
    order = list(range(len(items)))
    if opts.seed is not None:
        random.Random(opts.seed).shuffle(order)
    shards: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i in order:
        item_size = _size(items[i]) if opts.shard_bytes else 0
        full = (len(current) >= opts.samples_per_shard if not opts.shard_bytes
                else current and size + item_size > opts.shard_bytes)
        if full:
            shards.append(current)
            current, size = [], 0
        current.append(i)
        size += item_size
    if current:
        shards.append(current)
    return shards


def _plan_id(items: list[Item], plan: list[list[int]], opts: ShardOptions) -> str:
    spec = {"items": [it.rel for it in items], "plan": plan, "modality": opts.modality,
            "transcode": asdict(opts.transcode), "prefix": opts.prefix}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _build_shard(job: tuple) -> dict:
    """Builds one shard; runs in a worker process. Returns its record (index entry, errors, plan id)."""
    out, name, items, modality, transcode, plan_id = job
    writer = ShardWriter(out / name)
    errors = []
    try:
        for item in items:
            try:
                for key, files in build_samples(item, modality, transcode):
                    writer.add(key, files)
            except Exception as err:  # a bad file is recorded and skipped; the run goes on
                errors.append({"path": str(item.path), "reason": f"{type(err).__name__}: {err}"})
        entry = writer.close()
    except BaseException:
        writer.abort()
        raise
    record = {"plan": plan_id, "entry": entry, "errors": errors, "items": len(items)}
    tmp = out / PARTS_DIR / f"{name}.json{TMP_MARK}{os.getpid()}"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, out / PARTS_DIR / f"{name}.json")  # the record marks the shard finished
    return record


def _finished(out: Path, name: str, plan_id: str) -> dict | None:
    rec_path = out / PARTS_DIR / f"{name}.json"
    if not rec_path.is_file():
        return None
    record = json.loads(rec_path.read_text())
    if record["entry"]["samples"] and not (out / name).is_file():
        return None
    if record.get("plan") != plan_id:
        raise ValueError(f"{out} holds shards of a different plan (other inputs or options); "
                         f"use a new output folder or the same options")
    return record


def run_sharding(src: Path, out: Path, opts: ShardOptions, *, progress: bool = True) -> dict:
    """Shards `src` into `out`; returns a summary. Writes index.json when every shard of the plan is done."""
    src, out = Path(src), Path(out)
    items, classes = list_items(src, opts.modality)
    if not items:
        raise ValueError(f"no {opts.modality} files found under {src}")
    plan = plan_shards(items, opts)
    plan_id = _plan_id(items, plan, opts)
    names = [f"{opts.prefix}-{j:06d}.tar" for j in range(len(plan))]
    if (out / "index.json").exists() and not opts.resume:
        raise ValueError(f"{out} already holds an index.json; pass --resume or choose a new output folder")
    if (out / PARTS_DIR).is_dir() and any((out / PARTS_DIR).iterdir()) and not opts.resume:
        raise ValueError(f"{out} holds shards of an unfinished run; pass --resume to continue it")
    (out / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob(f"*{TMP_MARK}*")) + list((out / PARTS_DIR).glob(f"*{TMP_MARK}*")):
        stale.unlink()  # partial files of an interrupted run
    part, num_parts = opts.part
    mine = [j for j in range(len(plan)) if j % num_parts == part]
    todo = [j for j in mine if _finished(out, names[j], plan_id) is None]
    jobs = [(out, names[j], [items[i] for i in plan[j]], opts.modality, opts.transcode, plan_id) for j in todo]
    bar = tqdm(total=sum(len(plan[j]) for j in todo), unit="file", desc=f"sharding {src.name}",
               disable=not progress)
    if opts.workers > 0 and len(jobs) > 1:
        with get_context("spawn").Pool(min(opts.workers, len(jobs))) as pool:
            for record in pool.imap_unordered(_build_shard, jobs):
                bar.update(record["items"])
    else:
        for job in jobs:
            bar.update(_build_shard(job)["items"])
    bar.close()
    records = {n: _finished(out, n, plan_id) for n in names}
    summary = {"shards": len(plan), "built": len(todo), "kept": len(mine) - len(todo), "items": len(items),
               "complete": all(records.values())}
    if summary["complete"]:
        summary.update(_write_index(out, names, records, classes, opts))
    return summary


def _write_index(out: Path, names: list[str], records: dict, classes: list[str], opts: ShardOptions) -> dict:
    # a shard whose every file failed holds no sample: keep it out of the index (readers trip on empty tars)
    shards = [records[n]["entry"] for n in names if records[n]["entry"]["samples"]]
    for n in names:
        if not records[n]["entry"]["samples"]:
            (out / n).unlink(missing_ok=True)
    errors = [e for n in names for e in records[n]["errors"]]
    index = {"version": 1, "modality": opts.modality, "classes": classes, "shards": shards,
             "samples": sum(s["samples"] for s in shards), "bytes": sum(s["bytes"] for s in shards),
             "errors": len(errors), "transcode": asdict(opts.transcode)}
    with open(out / "errors.jsonl", "w") as f:
        for e in errors:
            f.write(json.dumps(e) + "\n")
    tmp = out / f"index.json{TMP_MARK}{os.getpid()}"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out / "index.json")
    return {"samples": index["samples"], "bytes": index["bytes"], "errors": len(errors)}
