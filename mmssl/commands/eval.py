"""`mmssl eval propagation`: label propagation on DAVIS-2017, JHMDB or VIP with a frozen encoder.

    mmssl eval propagation --checkpoint CKPT --data ROOT --task davis [--preset crw|dino|siammae] [key=value ...]

Without --checkpoint the encoder is randomly initialised from --encoder (a timm ViT name) or from `encoder.*`
overrides; --pixels uses the raw-pixel baseline instead of an encoder. Other `key=value` pairs change the
propagation settings (`mmssl.eval.presets.PropagationSettings`), e.g. `topk=5 context=7 radius=none`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mmssl.config import ConfigError

__all__ = ["register", "add_propagation_parser", "run_propagation"]

DEFAULT_ENCODER = "vit_small_patch16_224"


def _split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    encoder, settings = [], []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        (encoder if item.startswith("encoder.") else settings).append(item)
    return encoder, settings


def run_propagation(args: argparse.Namespace) -> int:
    """Runs the propagation evaluation described by the parsed arguments."""
    from mmssl.eval.datasets import DataError, read_sequences
    from mmssl.eval.encoders import PixelFeatures, dense_features, load_encoder
    from mmssl.eval.evaluate import evaluate_propagation
    from mmssl.eval.presets import apply_settings, preset

    encoder_items, setting_items = _split_overrides(args.overrides)
    settings = apply_settings(preset(args.preset, args.task), setting_items)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.pixels:
        if args.checkpoint or encoder_items:
            raise ConfigError("--pixels uses no encoder; drop --checkpoint and encoder.* overrides")
        features = PixelFeatures(settings.pixel_stride)
        label = f"raw pixels (stride {settings.pixel_stride})"
    else:
        config = None
        if args.checkpoint is None:
            config = {"_component_": "mmssl.models.TokenEncoder", "name": args.encoder or DEFAULT_ENCODER,
                      "modality": "image"}
        elif args.encoder:
            encoder_items = [f"name={args.encoder}"] + encoder_items
        relative = [item[len("encoder."):] if item.startswith("encoder.") else item for item in encoder_items]
        encoder = load_encoder(args.checkpoint, config, overrides=relative).to(device)
        features = dense_features(encoder)
        label = f"{args.checkpoint or 'random init'} ({getattr(encoder, 'name', type(encoder).__name__)})"
    out = Path(args.out or f"propagation/{args.task}")
    try:
        sequences = read_sequences(args.task, args.data, args.split)
        print(f"{args.task}: {len(sequences)} sequences, {label}, preset {args.preset}, device {device} -> {out}")
        evaluate_propagation(args.task, sequences, features, settings, out, device=device)
    except DataError as err:  # a bad dataset file is the user's to fix: one line, not a traceback
        raise ConfigError(str(err)) from None
    return 0


def add_propagation_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds the `propagation` subcommand to `subparsers` (used by `mmssl eval`; other groups may reuse it)."""
    prop = subparsers.add_parser("propagation", help="label propagation on DAVIS-2017 (J&F), JHMDB (PCK) or VIP "
                                 "(mIoU)", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    prop.add_argument("--checkpoint", type=Path, help="checkpoint with config.method.encoder and encoder.* weights "
                      "(leave out for a random init)")
    prop.add_argument("--data", type=Path, required=True, help="dataset root (see mmssl.eval.datasets)")
    prop.add_argument("--task", choices=["davis", "jhmdb", "vip"], required=True)
    prop.add_argument("--preset", choices=["crw", "dino", "siammae"], default="crw")
    prop.add_argument("--split", help="split name or list file (default: the dataset's val list, else every "
                      "sequence folder)")
    prop.add_argument("--encoder", help=f"timm ViT name for a random init (default {DEFAULT_ENCODER})")
    prop.add_argument("--pixels", action="store_true", help="raw-pixel baseline instead of an encoder")
    prop.add_argument("--out", help="output folder (default propagation/<task>)")
    prop.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    prop.add_argument("overrides", nargs="*", metavar="key=value",
                      help="propagation settings, or encoder.<arg>=value for the encoder config")
    prop.set_defaults(func=run_propagation)
    return prop


def run_probe(args: argparse.Namespace) -> int:
    """k-NN (DINO's weighted vote) or a linear probe (MAE's BatchNorm + linear) on frozen shard features."""
    from mmssl.eval.encoders import load_encoder
    from mmssl.eval.frozen import shard_features
    from mmssl.eval.knn import knn_scores, topk_accuracy
    from mmssl.eval.linear import evaluate_probe, train_linear_probe

    encoder_items, _ = _split_overrides(args.overrides)
    relative = [item[len("encoder."):] for item in encoder_items]
    config = None if args.checkpoint else {"_component_": "mmssl.models.TokenEncoder",
                                           "name": args.encoder or DEFAULT_ENCODER, "modality": args.modality}
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder = load_encoder(args.checkpoint, config, overrides=relative)
    train_x, train_y = shard_features(encoder, args.train, batch_size=args.batch_size, workers=args.workers,
                                      device=device)
    val_x, val_y = shard_features(encoder, args.val, batch_size=args.batch_size, workers=args.workers, device=device)
    classes = int(max(train_y.max(), val_y.max())) + 1
    if args.eval_command == "knn":
        scores = knn_scores(train_x, train_y, val_x, k=args.k, temperature=args.temperature, num_classes=classes)
        acc = topk_accuracy(scores, val_y)
        what = f"weighted k-NN (k={args.k}, T={args.temperature})"
    else:
        probe = train_linear_probe(train_x, train_y, num_classes=classes, epochs=args.epochs)
        acc = evaluate_probe(probe, val_x, val_y)
        what = f"linear probe ({args.epochs} epochs)"
    print(f"{what} on {len(train_y)} train / {len(val_y)} val samples, {classes} classes: "
          f"top-1 {acc['top1']:.2f}  top-5 {acc['top5']:.2f}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `mmssl eval propagation`, `mmssl eval knn` and `mmssl eval linear`."""
    p = subparsers.add_parser("eval", help="evaluate a frozen encoder")
    sub = p.add_subparsers(dest="eval_command", metavar="EVAL")
    add_propagation_parser(sub)
    for name, help_text in (("knn", "weighted k-NN on frozen features (k=20, T=0.07)"),
                            ("linear", "linear probe on frozen features (BatchNorm without affine + linear)")):
        q = sub.add_parser(name, help=help_text)
        q.add_argument("--checkpoint", type=Path, help="pretraining checkpoint (leave out for a random init)")
        q.add_argument("--train", required=True, help="labelled training shards (folder, index.json or pattern)")
        q.add_argument("--val", required=True, help="labelled validation shards")
        q.add_argument("--encoder", help=f"timm ViT name for a random init (default {DEFAULT_ENCODER})")
        q.add_argument("--modality", default="image", help="modality of a random-init encoder")
        q.add_argument("--batch-size", type=int, default=64)
        q.add_argument("--workers", type=int, default=2)
        q.add_argument("--device", default=None)
        q.add_argument("--k", type=int, default=20)
        q.add_argument("--temperature", type=float, default=0.07)
        q.add_argument("--epochs", type=int, default=90)
        q.add_argument("overrides", nargs="*", help="encoder.key=value changes to the encoder config")
        q.set_defaults(func=run_probe)
    p.set_defaults(func=lambda args: p.print_help() or 0)  # `mmssl eval` alone: list what it offers
