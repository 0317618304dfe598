"""`mmssl eval propagation|knn|linear`: a frozen encoder beside its baselines, one table in percent.

    mmssl eval propagation --checkpoint CKPT --data ROOT --task davis [--preset crw|dino|siammae] [key=value ...]
    mmssl eval knn    --checkpoint CKPT --train SHARDS --val SHARDS [modality.size=[64,64]] [encoder.key=value ...]
    mmssl eval linear --checkpoint CKPT --train SHARDS --val SHARDS

Every command prints one comparison table: the checkpoint, the same architecture at a seeded random init (built
from the checkpoint's config), and the raw input (k-NN / linear: raw pixels, clip pixels or mean MFCC;
propagation: raw-pixel features and copying the first frame's mask), and writes it as CSV and JSON into --out
(default: `<run_dir>/eval/`, beside the checkpoint). Without --checkpoint the encoder is a random init of --encoder
(a timm ViT name) or of `encoder.*` overrides; --no-baselines keeps only the encoder's row.

k-NN and linear probes feed the encoder as its training did (image crop size, clip length and stride, audio window
and fbank, read from the checkpoint's config); `modality.size=[h,w]` (or `encoder.modality=`) overrides that, and a
size other than the training one is printed. k-NN is DINO's weighted vote (k=20, T=0.07); the linear probe is
solved to convergence (L-BFGS on standardised features), with no epochs or learning rate to set.

For propagation, `key=value` pairs change the settings (`mmssl.eval.presets.PropagationSettings`), e.g.
`topk=5 context=7 radius=none`; --pixels runs the raw-pixel features alone.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from mmssl.config import ConfigError
from mmssl.launch import call

__all__ = ["register", "add_propagation_parser", "run_propagation", "run_probe"]

DEFAULT_ENCODER = "vit_small_patch16_224"
PROPAGATION_METRICS = {"davis": ["J&F", "J", "F"], "jhmdb": ["PCK@0.1", "PCK@0.2"], "vip": ["mIoU"]}


def _split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    encoder, settings = [], []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        (encoder if item.startswith("encoder.") else settings).append(item)
    return encoder, settings


def _device(choice: str | None) -> torch.device:
    return torch.device(choice or ("cuda" if torch.cuda.is_available() else "cpu"))


def _encoder_args(args: argparse.Namespace, encoder_items: list[str]) -> tuple[dict | None, list[str]]:
    """The encoder config without a checkpoint (None with one) and the relative `encoder.*` overrides."""
    config = None
    if args.checkpoint is None:
        config = {"_component_": "mmssl.models.TokenEncoder", "name": args.encoder or DEFAULT_ENCODER,
                  "modality": getattr(args, "modality", None) or "image"}
    elif args.encoder:
        encoder_items = [f"encoder.name={args.encoder}"] + encoder_items
    return config, [item[len("encoder."):] for item in encoder_items]


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _scores(task: str, percent: dict) -> dict:
    names = {"J": "J_mean", "F": "F_mean"}
    return {m: float(percent.get(names.get(m, m), float("nan"))) for m in PROPAGATION_METRICS[task]}


def _check_frames(encoder: torch.nn.Module, checkpoint: Path) -> None:
    """Propagation reads one frame at a time: only encoders of RGB images (frames) fit."""
    spec = getattr(encoder, "modality", None)
    if spec is None or spec.name != "image" or spec.channels != 3 or len(spec.patch) != 2:
        what = "no modality" if spec is None else f"{spec.name!r} inputs"
        raise ConfigError(f"{checkpoint}: propagation reads RGB frames, but this {type(encoder).__name__} reads "
                          f"{what}; probe it with `mmssl eval knn` or `mmssl eval linear`")


def run_propagation(args: argparse.Namespace) -> int:
    """Runs the propagation evaluation described by the parsed arguments and prints its comparison table."""
    from mmssl.eval.baselines import copy_first_frame
    from mmssl.eval.table import architecture, default_out_dir
    from mmssl.eval.datasets import DataError, read_sequences
    from mmssl.eval.encoders import PixelFeatures, checkpoint_encoder_config, dense_features, load_encoder
    from mmssl.eval.evaluate import evaluate_propagation, in_percent
    from mmssl.eval.presets import apply_settings, preset
    from mmssl.eval.table import Comparison

    encoder_items, setting_items = _split_overrides(args.overrides)
    settings = apply_settings(preset(args.preset, args.task), setting_items)
    device = _device(args.device)
    rows = []  # (row name, what, dense features)
    if args.pixels:
        if args.checkpoint or encoder_items:
            raise ConfigError("--pixels uses no encoder; drop --checkpoint and encoder.* overrides")
    else:
        config, relative = _encoder_args(args, encoder_items)
        shown = config or checkpoint_encoder_config(args.checkpoint)
        if args.checkpoint is not None:
            trained = load_encoder(args.checkpoint, overrides=relative).to(device)
            _check_frames(trained, args.checkpoint)
            rows.append(("checkpoint", f"{args.checkpoint} ({architecture(trained, shown)})", dense_features(trained)))
        if args.baselines or args.checkpoint is None:
            twin = load_encoder(args.checkpoint, config, overrides=relative, random_init=True, seed=args.seed)
            rows.append(("random init", f"{architecture(twin, shown)}, seed {args.seed}",
                         dense_features(twin.to(device))))
    if args.pixels or args.baselines:
        rows.append(("raw pixels", f"mean colour of {settings.pixel_stride}x{settings.pixel_stride} cells",
                     PixelFeatures(settings.pixel_stride)))
    out = Path(args.out) if args.out else default_out_dir(args.checkpoint) / "propagation" / args.task
    try:
        sequences = read_sequences(args.task, args.data, args.split)
        size = "each frame's own size" if settings.size is None else f"size {settings.size}"
        print(f"{args.task}: {len(sequences)} sequences, preset {args.preset} ({size}), device {device} -> {out}")
        table = Comparison(task=f"{args.task} label propagation, preset {args.preset}, {len(sequences)} sequences",
                           metrics=PROPAGATION_METRICS[args.task],
                           settings={"task": args.task, "preset": args.preset, "data": str(args.data),
                                     "checkpoint": None if args.checkpoint is None else str(args.checkpoint),
                                     "seed": args.seed, **{k: v for k, v in vars(settings).items()}})
        for i, (name, what, features) in enumerate(rows):
            # the first row (the encoder under evaluation) writes into --out, its baselines into subfolders
            folder = out if i == 0 else out / _slug(name)
            result = evaluate_propagation(args.task, sequences, features, settings, folder, device=device,
                                          verbose=False)
            table.add(name, what, _scores(args.task, result.percent()))
        if args.task == "davis" and (args.pixels or args.baselines):
            table.add("copy first frame", "the first frame's mask for every frame",
                      _scores("davis", in_percent(copy_first_frame(sequences))))
    except DataError as err:  # a bad dataset file is the user's to fix: one line, not a traceback
        raise ConfigError(str(err)) from None
    print(table.format())
    csv_path, _ = table.write(out, "propagation")
    print(f"wrote {csv_path} and {csv_path.with_suffix('.json')}")
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
    prop.add_argument("--pixels", action="store_true", help="the raw-pixel features alone, no encoder")
    _common_options(prop)
    prop.add_argument("overrides", nargs="*", metavar="key=value",
                      help="propagation settings, or encoder.<arg>=value for the encoder config")
    prop.set_defaults(func=run_propagation)
    return prop


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="folder for the table (CSV + JSON) and outputs (default: <run_dir>/eval "
                        "beside the checkpoint, else ./eval)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-init baseline (default 0)")
    parser.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                        help="add the random-init and raw-input rows (default: on)")


def run_probe(args: argparse.Namespace) -> int:
    """k-NN (DINO's weighted vote) or a converged linear probe on frozen shard features, with baselines."""
    from mmssl.eval.inputs import split_modality_overrides
    from mmssl.eval.table import default_out_dir

    modality, rest = split_modality_overrides(args.overrides)
    encoder_items, unknown = _split_overrides(rest)
    if unknown:
        raise ConfigError(f"unknown override {unknown[0]!r}: probes take encoder.<arg>=value and modality.<field>="
                          f"value (e.g. modality.size=[64,64])")
    config, relative = _encoder_args(args, encoder_items)
    settings = call("recipes.compare:ProbeSettings", probe=args.eval_command, train=args.train, val=args.val, checkpoint=args.checkpoint,
                             encoder_config=config, encoder_overrides=relative, modality=modality, k=args.k,
                             temperature=args.temperature, l2=args.l2, seed=args.seed, baselines=args.baselines,
                             batch_size=args.batch_size, workers=args.workers, device=str(_device(args.device)))
    table = call("recipes.compare:probe_comparison", settings)
    print(table.format())
    csv_path, _ = table.write(Path(args.out) if args.out else default_out_dir(args.checkpoint), args.eval_command)
    print(f"wrote {csv_path} and {csv_path.with_suffix('.json')}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `mmssl eval propagation`, `mmssl eval knn` and `mmssl eval linear`."""
    p = subparsers.add_parser("eval", help="evaluate a frozen encoder")
    sub = p.add_subparsers(dest="eval_command", metavar="EVAL")
    add_propagation_parser(sub)
    for name, help_text in (("knn", "weighted k-NN on frozen features (k=20, T=0.07), with baselines"),
                            ("linear", "linear probe on frozen features, solved to convergence, with baselines")):
        q = sub.add_parser(name, help=help_text, description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("--checkpoint", type=Path, help="pretraining checkpoint (leave out for a random init)")
        q.add_argument("--train", required=True, help="labelled training shards (folder, index.json or pattern)")
        q.add_argument("--val", required=True, help="labelled validation shards")
        q.add_argument("--encoder", help=f"timm ViT name for a random init (default {DEFAULT_ENCODER})")
        q.add_argument("--modality", default="image", help="modality of a random-init encoder")
        q.add_argument("--batch-size", type=int, default=64)
        q.add_argument("--workers", type=int, default=2)
        q.add_argument("--k", type=int, default=20, help="k-NN neighbours (default 20, DINO)")
        q.add_argument("--temperature", type=float, default=0.07, help="k-NN vote temperature (default 0.07)")
        q.add_argument("--l2", type=float, default=None, help="linear probe weight penalty (default: chosen from "
                       "1e-6..1e-1 on a seeded held-out fifth of the training rows)")
        _common_options(q)
        q.add_argument("overrides", nargs="*", metavar="key=value",
                       help="encoder.<arg>=value (encoder config) or modality.<field>=value (input, e.g. size)")
        q.set_defaults(func=run_probe)
    p.set_defaults(func=lambda args: p.print_help() or 0)  # `mmssl eval` alone: list what it offers
