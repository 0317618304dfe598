"""`mmssl export RUN_DIR --format timm|mmssl OUT.safetensors`: the trained encoder, loadable elsewhere."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from mmssl.export import export_encoder

    try:
        out = export_encoder(args.run, args.out, format=args.format)
    except ValueError as err:
        print(f"mmssl export: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `mmssl export`."""
    p = subparsers.add_parser("export", help="export a trained encoder (timm or mmssl safetensors)")
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("out", help="output .safetensors file")
    p.add_argument("--format", default="timm", choices=["timm", "mmssl"],
                   help="timm: load with timm.create_model(name, pretrained=True, "
                        "pretrained_cfg_overlay=dict(file=OUT)); mmssl: state dict + token spec")
    p.set_defaults(func=run)
