"""Pretraining recipe, one loop for every method and modality. Reads top to bottom:

config -> data (streaming loader + device stage) -> method -> AdamW -> loop (accumulate, clip, step, schedule,
EMA update, log, figure, checkpoint) -> final checkpoint and loss curve.

Run it as `mmssl <modality> pretrain --config NAME [key=value ...]`, or under torchrun:
`torchrun --nproc_per_node 8 -m recipes.pretrain --config image/mae_vit_base data.train.source=...`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mmssl.config import ConfigError, instantiate, load_config, section, validate
from mmssl.discover import find_config
from mmssl.train import distributed as dist
from mmssl.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from mmssl.train.optim import build_adamw, scaled_lr, set_hyper
from mmssl.train.plot import plot_curve
from mmssl.train.runlog import RunLog, make_run_dir
from mmssl.train.schedules import warmup_cosine
from recipes.settings import OptimSettings, TrainSettings

__all__ = ["pretrain", "main"]

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


def pretrain(cfg: dict[str, Any], *, resume: str | bool | None = None, run_dir: str | Path | None = None) -> dict:
    """Trains the configured method; returns a summary (run folder, steps, first/last loss, checkpoint, the method)."""
    # -- config: every key checked before anything is built ----------------------------------------------------
    unknown = [k for k in cfg if k not in SECTIONS and not k.startswith("_")]
    if unknown:
        raise ConfigError(f"config key {unknown[0]!r} is unknown; sections are {', '.join(SECTIONS)}")
    for key in ("method", "data"):
        if key not in cfg:
            raise ConfigError(f"config key {key!r} is missing")
    validate({k: cfg[k] for k in ("method", "data")})
    optim, train = section(OptimSettings, cfg.get("optim"), "optim"), section(TrainSettings, cfg.get("train"), "train")
    name = train.name or cfg.get("_name", "run")

    # -- devices, processes, seeds ------------------------------------------------------------------------------
    device = _device(train.device)
    dist.init_distributed(device)
    rank, world = dist.rank(), dist.world_size()
    amp = _precision(train.precision, device)
    torch.manual_seed(train.seed + rank)

    # -- data: a streaming loader (workers, CPU) and the device stage (main process) ----------------------------
    loader = instantiate(cfg["data"]["train"], where="data.train", rank=rank, world_size=world)
    if train.threads or device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(train.threads or max(1, cores // world - loader.num_workers))
    device_stage = instantiate(cfg["data"].get("device"), where="data.device") if cfg["data"].get("device") else None

    # -- method, optimiser, schedule ----------------------------------------------------------------------------
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
    step_fn = torch.compile(model) if train.compile else model
    effective_batch = loader.batch_size * optim.accum
    base_lr = optim.lr if optim.lr is not None else scaled_lr(optim.blr, effective_batch)
    opt = build_adamw(method, lr=base_lr, weight_decay=optim.weight_decay, betas=optim.betas)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    per_epoch = max(len(loader) // optim.accum, 1)
    total = train.steps or max(int(optim.epochs * per_epoch), 1)
    warmup = min(optim.warmup_epochs / optim.epochs, 1.0) if optim.epochs else 0.0

    # -- run folder, resume ---------------------------------------------------------------------------------------
    out_dir = Path(train.out_dir)
    ckpt_path = _resume_path(resume, out_dir, name)
    if run_dir is None:
        run_dir = ckpt_path.parent.parent if ckpt_path else (make_run_dir(out_dir, name) if rank == 0 else None)
    run_dir = Path(run_dir) if run_dir else out_dir / name
    log = RunLog(run_dir, enabled=rank == 0, tensorboard=train.tensorboard)
    step = 0
    if ckpt_path is not None:
        state = load_checkpoint(ckpt_path)
        method.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        loader.load_state_dict(state["data"])
        step = state["step"]
        log.load()
        log.truncate(step)
        set_rng_state(state["rng"])  # last: building the model and the loader above drew random numbers
    log.save_config(cfg)

    def checkpoint() -> Path | None:
        if rank != 0:
            return None
        return save_checkpoint(run_dir / "checkpoints" / "last.pt", {
            "config": cfg, "model": method.state_dict(), "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict() if scaler else None, "step": step, "total_steps": total,
            "rng": rng_state(), "data": loader.state_dict()})

    def figure(batch: dict) -> None:
        if rank == 0 and hasattr(method, "figure"):
            (run_dir / "figures").mkdir(exist_ok=True)
            with torch.no_grad():
                method.figure(batch, run_dir / "figures" / f"step{step:07d}.png")

    # -- the loop -----------------------------------------------------------------------------------------------
    bar = tqdm(total=total, initial=step, desc=name, unit="step", disable=rank != 0 or not train.progress)
    data = iter(loader)
    window, nonfinite, t_log, samples = [], 0, time.perf_counter(), 0
    batch = None
    end = min(total, train.stop_after) if train.stop_after else total
    while step < end:
        progress = step / total
        set_hyper(opt, lr=warmup_cosine(progress, base=base_lr, final=optim.min_lr, warmup=warmup),
                  weight_decay=None if optim.weight_decay_end is None else
                  warmup_cosine(progress, base=optim.weight_decay, final=optim.weight_decay_end))
        losses = []
        for micro in range(optim.accum):
            batch = next(data, None)
            while batch is None or batch.get("__size__", 1) == 0:  # epoch end, or a batch that was all skipped
                if batch is None:
                    data = iter(loader)
                batch = next(data, None)
            if device_stage is not None:
                batch = device_stage(batch, device)
            sync = micro == optim.accum - 1 or not isinstance(model, torch.nn.parallel.DistributedDataParallel)
            with (contextlib.nullcontext() if sync else model.no_sync()), \
                    torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = step_fn(batch)
            loss = out.loss / optim.accum
            (scaler.scale(loss) if scaler else loss).backward()
            losses.append(out.loss.detach())
            samples += batch.get("__size__", 0) or loader.batch_size // world
        loss_value = torch.stack(losses).mean()
        if not torch.isfinite(loss_value).item():  # skip the step, keep count
            opt.zero_grad(set_to_none=True)
            nonfinite += 1
            if nonfinite >= train.max_nonfinite:
                raise RuntimeError(f"{nonfinite} non-finite losses in a row at step {step}: lower the learning "
                                   f"rate, enable clip_grad, or use precision=bf16/fp32")
            continue
        nonfinite = 0
        if scaler:
            scaler.unscale_(opt)
        if optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(method.parameters(), optim.clip_grad)
        (scaler.step(opt), scaler.update()) if scaler else opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if hasattr(method, "update"):
            method.update(step / total)
        window.append(loss_value)
        bar.update(1)
        if step % train.log_every == 0 or step == total:
            elapsed = time.perf_counter() - t_log
            record = {"loss": torch.stack(window).mean().item(), "lr": opt.param_groups[0]["lr"],
                      "samples_per_s": samples * world / max(elapsed, 1e-9),
                      **{k: float(v) for k, v in out.logs.items()}}
            log.log(step, record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                            sps=f"{record['samples_per_s']:.0f}")
            window, samples, t_log = [], 0, time.perf_counter()
        if train.ckpt_every and step % train.ckpt_every == 0 and step < end:
            checkpoint()
        if train.figure_every > 0 and step % train.figure_every == 0:
            figure(batch)
    bar.close()

    # -- the end: checkpoint, figures, summary --------------------------------------------------------------------
    path = checkpoint()
    if train.figure_every >= 0 and batch is not None:
        figure(batch)
    losses = [r["loss"] for r in log.history]
    if rank == 0 and losses:
        plot_curve([r["step"] for r in log.history], losses, run_dir / "loss.png", title=f"{name}: loss")
    log.close()
    return {"run_dir": str(run_dir), "steps": step, "checkpoint": str(path) if path else None, "method": method,
            "first_loss": losses[0] if losses else math.nan, "last_loss": losses[-1] if losses else math.nan,
            "data": loader.stats.summary()}


TINY_OVERRIDES = Path(__file__).resolve().parent / "tiny_overrides.yaml"
"""Per shipped config, the `key=value` list that shrinks it to a CPU-sized run of the same recipe (`--tiny`)."""


def tiny_overrides(path: Path) -> list[str]:
    """The tiny override list of the shipped config at `path`; a ConfigError when it has none."""
    import yaml

    from mmssl.discover import CONFIG_ROOT

    path = Path(path).resolve()
    key = f"{path.parent.name}/{path.stem}" if path.parent.parent == CONFIG_ROOT.resolve() else str(path)
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
    args = parser.parse_args(argv)
    try:
        cfg = load_run_config(args.config, args.modality, args.overrides, tiny=args.tiny)
        name = cfg.pop("_name")
        cfg.setdefault("train", {}).setdefault("name", name)
        summary = pretrain(cfg, resume=args.resume)
    except (ConfigError, FileNotFoundError) as err:
        print(f"recipes.pretrain: error: {err}", file=sys.stderr)
        return 2
    if dist.rank() == 0:
        print(f"done: {summary['steps']} steps, loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}; "
              f"run folder {summary['run_dir']}; checkpoint {summary['checkpoint']}")
        print(f"data: {summary['data']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
