"""Pretraining recipe, one loop for every method and modality. Reads top to bottom:

config -> `build_run`: data (streaming loader + device stage, joined in one `Feed`), method, `TrainStep` (AdamW,
schedule, precision, compile) -> loop (a step per `accum` batches, log, figure, checkpoint) -> final checkpoint
and loss curve. The benchmarks build their side with `build_run` too and time the same `TrainStep`.

Run it as `mmssl <modality> pretrain --config NAME [key=value ...]`, or under torchrun:
`torchrun --nproc_per_node 8 -m recipes.pretrain --config image/mae_vit_base data.train.source=...`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from mmssl.config import ConfigError, instantiate, load_config, section, validate
from mmssl.discover import find_config
from mmssl.train import distributed as dist
from mmssl.train.checkpoint import (load_checkpoint, remove_stale_temporaries, rng_state, save_checkpoint,
                                    set_rng_state)
from mmssl.train.optim import build_adamw, scaled_lr
from mmssl.train.plot import plot_curve
from mmssl.train.runlog import RunLog, make_run_dir
from mmssl.train.schedules import warmup_cosine
from mmssl.train.step import NonFiniteLoss, TrainStep, method_inputs
from mmssl.config import parse_overrides_anywhere
from pipelines.feed import Feed
from pipelines.stats import DataError
from recipes.settings import OptimSettings, TrainSettings

__all__ = ["Run", "build_run", "check_config", "pretrain", "main"]

SECTIONS = ("method", "data", "optim", "train")


def _device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def _precision(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if choice == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[choice]


def _resume_path(resume: str | bool | None, out_dir: Path, name: str) -> Path | None:
    """The checkpoint to continue from: a file, a run folder, or "auto" (the newest run of this name)."""
    if not resume:
        return None
    if resume in (True, "auto"):
        runs = sorted(out_dir.glob(f"{name}-*/checkpoints/last.pt"), key=lambda p: p.stat().st_mtime)
        return runs[-1] if runs else None
    path = Path(resume)
    return path / "checkpoints" / "last.pt" if path.is_dir() else path


@dataclass
class Run:
    """Everything a pretraining run is made of, built from its config by `build_run` (the recipe and every
    benchmark build it the same way, so what is timed is what users run)."""

    cfg: dict[str, Any]
    name: str
    optim: OptimSettings
    train: TrainSettings
    device: torch.device
    rank: int
    world: int
    method: torch.nn.Module
    step: TrainStep
    loader: Any = None
    device_stage: Any = None
    feed: Feed | None = None
    total: int = 1  # optimiser steps of the schedule


def check_config(cfg: dict[str, Any]) -> tuple[OptimSettings, TrainSettings]:
    """Every key checked before anything is built; the plain sections as settings."""
    unknown = [k for k in cfg if k not in SECTIONS and not k.startswith("_")]
    if unknown:
        raise ConfigError(f"config key {unknown[0]!r} is unknown; sections are {', '.join(SECTIONS)}")
    for key in ("method", "data"):
        if key not in cfg:
            raise ConfigError(f"config key {key!r} is missing")
    validate({k: cfg[k] for k in ("method", "data")})
    return section(OptimSettings, cfg.get("optim"), "optim"), section(TrainSettings, cfg.get("train"), "train")


def _threads(train: TrainSettings, world: int, workers: int) -> None:
    """The training process's own torch threads: the cores its loader workers (one thread each) leave free."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(train.threads or max(1, cores // world - workers))


def build_run(cfg: dict[str, Any], *, data: bool = True, batch_size: int | None = None) -> Run:
    """Builds a run from a config: devices and processes, the method (on its device, wrapped for DDP/FSDP), the
    step (AdamW, schedule, precision, compile) and, with `data`, the loader, device stage and feed.

    `batch_size` (per process) sizes the learning rate when there is no loader (benchmarks on synthetic batches).
    """
    optim, train = check_config(cfg)
    name = train.name or cfg.get("_name", "run")
    device = _device(train.device)
    dist.init_distributed(device)
    rank, world = dist.rank(), dist.world_size()
    torch.manual_seed(train.seed + rank)

    # -- data: a streaming loader (workers, CPU) and the device stage ------------------------------------------
    loader = instantiate(cfg["data"]["train"], where="data.train", rank=rank, world_size=world) if data else None
    _threads(train, world, loader.num_workers if loader is not None else 0)
    stage_cfg = cfg["data"].get("device")
    device_stage = instantiate(stage_cfg, where="data.device") if stage_cfg else None
    if device_stage is not None and hasattr(device_stage, "check"):
        device_stage.check()  # before the method is built: a mistake costs no model

    # -- method, optimiser, schedule, step ------------------------------------------------------------------------
    method = instantiate(cfg["method"], where="method").to(device)
    model = method
    if world > 1:
        method = dist.sync_batchnorm(method, device)  # BN over the global batch (BYOL, SimCLR, MoCo v3, DINO)
        if train.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in getattr(method.encoder, "blocks", []):
                fully_shard(block)
            model = fully_shard(method)
        else:
            model = torch.nn.parallel.DistributedDataParallel(
                method, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=train.find_unused_parameters)
    per_step = (loader.batch_size if loader is not None else (batch_size or 1) * world) * optim.accum
    base_lr = optim.lr if optim.lr is not None else scaled_lr(optim.blr, per_step)
    total = train.steps or (max(int(optim.epochs * max(len(loader) // optim.accum, 1)), 1) if loader else 1)
    warmup = min(optim.warmup_epochs / optim.epochs, 1.0) if optim.epochs else 0.0
    wd = None if optim.weight_decay_end is None else (
        lambda p: warmup_cosine(p, base=optim.weight_decay, final=optim.weight_decay_end))
    step = TrainStep(method, build_adamw(method, lr=base_lr, weight_decay=optim.weight_decay, betas=optim.betas),
                     model=model, precision=_precision(train.precision, device), clip_grad=optim.clip_grad,
                     compile=device.type == "cuda" if train.compile == "auto" else bool(train.compile),
                     lr=lambda p: warmup_cosine(p, base=base_lr, final=optim.min_lr, warmup=warmup), weight_decay=wd)

    run = Run(cfg=cfg, name=name, optim=optim, train=train, device=device, rank=rank, world=world, method=method,
              step=step, loader=loader, device_stage=device_stage, total=total)
    if device_stage is not None and hasattr(device_stage, "with_mask"):
        device_stage.with_mask(getattr(method, "masking", None))  # the method's masks, drawn in the workers
    if loader is not None:
        run.feed = Feed(loader, device_stage, device, prefetch=train.prefetch)
    return run


def pretrain(cfg: dict[str, Any], *, resume: str | bool | None = None, run_dir: str | Path | None = None) -> dict:
    """Trains the configured method; returns a summary (run folder, steps, first/last loss, checkpoint, the method)."""
    run = build_run(cfg)
    train, optim, method, step, feed = run.train, run.optim, run.method, run.step, run.feed
    rank, world, total, name = run.rank, run.world, run.total, run.name
    per_epoch = max(len(run.loader) // optim.accum, 1)  # steps of an epoch (before a resume moves the loader)

    # -- run folder, resume ---------------------------------------------------------------------------------------
    out_dir = Path(train.out_dir)
    ckpt_path = _resume_path(resume, out_dir, name)
    if resume in (True, "auto") and ckpt_path is None and rank == 0:
        print(f"--resume auto: no earlier run of {name!r} under {out_dir}: starting a new one", file=sys.stderr)
    try:
        if run_dir is None:
            run_dir = ckpt_path.parent.parent if ckpt_path else (make_run_dir(out_dir, name) if rank == 0 else None)
        run_dir = Path(run_dir) if run_dir else out_dir / name
        log = RunLog(run_dir, enabled=rank == 0, tensorboard=train.tensorboard)
        if rank == 0:
            remove_stale_temporaries(run_dir / "checkpoints")
            log.save_config(cfg)
    except OSError as err:  # a read-only or missing folder, a full disk
        raise ConfigError(f"train.out_dir {str(out_dir)!r}: cannot write the run folder: "
                          f"{err.strerror or err}") from None
    done = 0
    if ckpt_path is not None:
        state = load_checkpoint(ckpt_path)
        try:
            method.load_state_dict(state["model"])
            step.load_state_dict(state)
            feed.load_state_dict(state["data"])
        except (RuntimeError, ValueError, KeyError) as err:  # another model, optimiser or batch size
            raise ConfigError(f"cannot resume from {ckpt_path}: {str(err).splitlines()[0]}") from None
        done = state["step"]
        log.load()
        log.truncate(done)
        set_rng_state(state["rng"])  # last: building the model and the loader above drew random numbers

    def checkpoint() -> Path | None:
        if rank != 0:
            return None
        return save_checkpoint(run_dir / "checkpoints" / "last.pt", {
            "config": cfg, "model": method.state_dict(), **step.state_dict(), "step": done, "total_steps": total,
            "rng": rng_state(), "data": feed.state_dict()})

    def figure(batch: dict) -> None:
        if rank == 0 and hasattr(method, "figure"):
            (run_dir / "figures").mkdir(exist_ok=True)
            with torch.no_grad():
                method.figure(method_inputs(batch), run_dir / "figures" / f"step{done:07d}.png")

    # -- the loop: nothing in it waits for the device except the log lines -----------------------------------
    bar = tqdm(total=total, initial=done, desc=name, unit="step", disable=rank != 0 or not train.progress)
    t_log, samples, waited = time.perf_counter(), 0, feed.waited_s
    batch = None
    end = min(total, train.stop_after) if train.stop_after else total
    began = done  # the skip counts start here: an epoch's end is an exact check once a whole epoch was counted
    try:
        while done < end:
            batches = [next(feed) for _ in range(optim.accum)]
            batch = batches[-1]
            out = step(batches, done / total, progress_after=(done + 1) / total)
            samples += sum(b.get("__size__", 0) or run.loader.batch_size // world for b in batches)
            done += 1
            bar.update(1)
            log_now = done % train.log_every == 0 or done == end
            epoch_end = done % per_epoch == 0 and done - began >= per_epoch
            if log_now or epoch_end:
                # the run's skip budget, over all ranks: a collective, so at the same steps on every rank
                feed.stats.check(exact=epoch_end)
            if log_now:
                counts = step.drain()
                step.check(counts, max_nonfinite=train.max_nonfinite, step=done)
                elapsed = time.perf_counter() - t_log
                record = {"loss": counts["loss"], "lr": step.optimizer.param_groups[0]["lr"],
                          "samples_per_s": samples * world / max(elapsed, 1e-9),
                          "data_wait": min((feed.waited_s - waited) / max(elapsed, 1e-9), 1.0),
                          "skipped": counts["skipped"], **{k: float(v) for k, v in out.logs.items()}}
                log.log(done, record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                sps=f"{record['samples_per_s']:.0f}", wait=f"{record['data_wait']:.0%}")
                t_log, samples, waited = time.perf_counter(), 0, feed.waited_s
            if train.ckpt_every and done % train.ckpt_every == 0 and done < end:
                checkpoint()
            if train.figure_every > 0 and done % train.figure_every == 0:
                figure(batch)
    finally:
        bar.close()
        feed.close()
    data = feed.stats.merged().summary()  # the run's counts over all ranks (a collective: every rank gets here)

    # -- the end: checkpoint, figures, summary --------------------------------------------------------------------
    path = checkpoint()
    if train.figure_every >= 0 and batch is not None:
        figure(batch)
    history = log.history
    losses = [r["loss"] for r in history]
    if rank == 0 and losses:
        plot_curve([r["step"] for r in history], losses, run_dir / "loss.png", title=f"{name}: loss")
    log.close()
    waits = [r["data_wait"] for r in history if "data_wait" in r]
    return {"run_dir": str(run_dir), "steps": done, "checkpoint": str(path) if path else None, "method": method,
            "first_loss": losses[0] if losses else math.nan, "last_loss": losses[-1] if losses else math.nan,
            "data_wait": sum(waits) / len(waits) if waits else math.nan, "data": data}


TINY_OVERRIDES = Path(__file__).resolve().parent / "tiny_overrides.yaml"
"""Per shipped config, the `key=value` list that shrinks it to a CPU-sized run of the same recipe (`--tiny`)."""


def tiny_overrides(path: Path) -> list[str]:
    """The tiny override list of the shipped config at `path`; a ConfigError when it has none."""
    import yaml

    from mmssl.discover import config_root

    path = Path(path).resolve()
    key = f"{path.parent.name}/{path.stem}" if path.parent.parent == config_root().resolve() else str(path)
    table = yaml.safe_load(TINY_OVERRIDES.read_text()) or {}
    if key not in table:
        raise ConfigError(f"config {key!r} has no tiny override in {TINY_OVERRIDES.name} "
                          f"(the *_tiny configs are small already: run them without --tiny)")
    return [str(item) for item in table[key]]


def load_run_config(name: str, modality: str | None, overrides: list[str], *, tiny: bool = False) -> dict:
    """Reads a config by name or path and applies overrides (after its tiny override when `tiny`); remembers the
    config name for the run folder."""
    path = find_config(name, modality)
    cfg = load_config(path, (tiny_overrides(path) if tiny else []) + list(overrides))
    cfg.setdefault("_name", path.stem + ("-tiny" if tiny else ""))
    return cfg


def main(argv: list[str] | None = None) -> int:
    """`python -m recipes.pretrain --config NAME [--modality M] [--resume auto|PATH] [--tiny] [key=value ...]`."""
    parser = argparse.ArgumentParser(prog="recipes.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--modality", default=None)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--tiny", action="store_true", help="apply the config's tiny override first")
    parser.add_argument("overrides", nargs="*")
    args = parse_overrides_anywhere(parser, argv)
    try:
        cfg = load_run_config(args.config, args.modality, args.overrides, tiny=args.tiny)
        name = cfg.pop("_name")
        cfg.setdefault("train", {}).setdefault("name", name)
        summary = pretrain(cfg, resume=args.resume)
    except (ConfigError, FileNotFoundError) as err:
        print(f"recipes.pretrain: error: {err}", file=sys.stderr)
        return 2
    except (DataError, NonFiniteLoss, OSError) as err:  # the data, the disk or the run went wrong: one line
        print(f"recipes.pretrain: error: {err}", file=sys.stderr)
        return 1
    if dist.rank() == 0:
        print(f"done: {summary['steps']} steps, loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}; "
              f"run folder {summary['run_dir']}; checkpoint {summary['checkpoint']}")
        print(f"data: {summary['data']}")
        print(f"data wait: {summary['data_wait']:.0%} of the training time was spent waiting for batches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
