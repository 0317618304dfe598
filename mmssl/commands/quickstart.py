"""`mmssl quickstart`: synthetic videos -> shards -> SiamMAE pretraining -> propagation J&F, in one command."""

from __future__ import annotations

import argparse

from mmssl.launch import call


def run(args: argparse.Namespace) -> int:
    call("recipes.quickstart:quickstart", args.out, data=args.data, eval_data=args.eval_data, overrides=args.overrides, workers=args.workers)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `mmssl quickstart`."""
    p = subparsers.add_parser("quickstart", help="the whole job on synthetic videos (or yours): shard, pretrain "
                              "SiamMAE, evaluate label propagation",
                              description="Makes synthetic videos (unless --data), shards them, pretrains a tiny "
                                          "ViT with SiamMAE and prints DAVIS J&F of the trained encoder, the same "
                                          "encoder at random init, and copying the first-frame mask.")
    p.add_argument("--out", default="quickstart", help="working folder (data, shards, runs)")
    p.add_argument("--data", default=None, help="a folder of your own videos to train on")
    p.add_argument("--eval-data", default=None, help="a DAVIS-style folder to evaluate on (default: synthetic)")
    p.add_argument("--workers", type=int, default=1, help="loader and sharding worker processes")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the SiamMAE config, e.g. train.steps=200")
    p.set_defaults(func=run)
