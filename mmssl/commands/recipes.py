"""`mmssl image|video|audio|multimodal pretrain --config NAME [--tiny] [key=value ...]` and `mmssl cp CONFIG DEST`."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mmssl.launch import call

MODALITIES = ("image", "video", "audio", "multimodal")


def _pretrain(args: argparse.Namespace) -> int:
    if args.nproc > 1:  # a shortcut for torchrun on one machine
        # checked here first: a mistake is one line, not one per process and a launcher's traceback after them
        config = call("recipes.pretrain:load_run_config", args.config, args.modality, list(args.overrides),
                      tiny=args.tiny)
        call("recipes.pretrain:check_config", config)
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}", "-m",
               "recipes.pretrain", "--config", args.config, "--modality", args.modality]
        cmd += ["--resume", args.resume] if args.resume else []
        cmd += ["--tiny"] if args.tiny else []
        return subprocess.call(cmd + list(args.overrides), env=os.environ.copy())
    cmd = ["--config", args.config, "--modality", args.modality] + (["--resume", args.resume] if args.resume else [])
    cmd += ["--tiny"] if args.tiny else []
    return call("recipes.pretrain:main", cmd + list(args.overrides))


def _cp(args: argparse.Namespace) -> int:
    from mmssl.discover import find_config

    src = find_config(args.config)
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists() and not args.force:
        print(f"mmssl cp: error: {dest} exists (use --force to overwrite)", file=sys.stderr)
        return 2
    shutil.copyfile(src, dest)
    print(f"copied {src} -> {dest}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds one subcommand per modality (with `pretrain`) and `cp`."""
    for modality in MODALITIES:
        p = subparsers.add_parser(modality, help=f"{modality} recipes")
        sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
        pre = sub.add_parser("pretrain", help=f"pretrain a method on {modality} shards",
                             description="Config keys are constructor arguments; override any with key=value.")
        pre.add_argument("--config", required=True, help=f"a name under recipes/configs/{modality}/ or a path")
        pre.add_argument("--resume", default=None, help="auto (newest run of this config), a run folder or .pt")
        pre.add_argument("--nproc", type=int, default=1, help="processes on this machine (torchrun shortcut)")
        pre.add_argument("--tiny", action="store_true",
                         help="shrink the config to a CPU-sized run of the same recipe (recipes/tiny_overrides.yaml), "
                              "applied before your overrides")
        pre.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.blr=1e-4")
        pre.set_defaults(func=_pretrain, modality=modality)
        if modality == "video":  # video encoders are judged by label propagation: `mmssl video eval propagation`
            from mmssl.commands.eval import add_propagation_parser

            ev = sub.add_parser("eval", help="evaluate a video encoder (label propagation)")
            add_propagation_parser(ev.add_subparsers(dest="eval_command", metavar="EVAL", required=True))
        if modality == "audio":  # speech encoders are judged by linear probes: `mmssl audio eval speaker|phone`
            from mmssl.commands.speech import add_speech_parsers

            ev = sub.add_parser("eval", help="evaluate a speech encoder (speaker and phone linear probes)")
            add_speech_parsers(ev.add_subparsers(dest="eval_command", metavar="EVAL", required=True))
    cp = subparsers.add_parser("cp", help="copy a shipped config to edit it")
    cp.add_argument("config", help="config name (e.g. mae_vit_base or image/mae_vit_base) or path")
    cp.add_argument("dest")
    cp.add_argument("--force", action="store_true")
    cp.set_defaults(func=_cp)
