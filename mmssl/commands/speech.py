"""`mmssl audio eval speaker|phone`: linear speech probes of a CPC encoder, or of MFCCs with --mfcc.

    mmssl audio eval speaker --checkpoint CKPT --train SHARDS --val SHARDS
    mmssl audio eval phone --checkpoint CKPT --train SHARDS --val SHARDS --alignments converted_aligned_phones.txt
    mmssl audio eval speaker --mfcc --train SHARDS --val SHARDS          # the MFCC + linear baseline

Speaker ids come from the shards' json `speaker` (`mmssl shard ... --modality audio` with a speaker column), else
from `.cls`. Without --checkpoint the encoder is a random init of `encoder.*` overrides on CPC's defaults.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mmssl.config import ConfigError

__all__ = ["add_speech_parsers", "run_speech_probe"]

DEFAULT_ENCODER = {"_component_": "mmssl.models.cpc_audio.CPCAudioEncoder"}


def run_speech_probe(args: argparse.Namespace) -> int:
    """Extracts frozen features of --train and --val, trains the linear probe, prints its accuracy."""
    from mmssl.eval.encoders import load_encoder
    from mmssl.eval.speech import (cpc_frames, encode_labels, mfcc_frames, phone_features, probe_accuracy,
                                   read_alignments, speaker_features, train_probe)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    items = [item[len("encoder."):] if item.startswith("encoder.") else item for item in args.overrides]
    if args.mfcc:
        if args.checkpoint or items:
            raise ConfigError("--mfcc uses no encoder; drop --checkpoint and encoder.* overrides")
        frames, what = mfcc_frames(n_mfcc=args.n_mfcc), f"MFCC ({args.n_mfcc})"
    else:
        encoder = load_encoder(args.checkpoint, None if args.checkpoint else DEFAULT_ENCODER, overrides=items)
        frames = cpc_frames(encoder.eval().to(device), level=args.level)
        what = f"{args.checkpoint or 'random init'} ({args.level})"
    opts = dict(samples=args.samples, batch_size=args.batch_size, workers=args.workers, device=device)
    if args.eval_command == "speaker":
        train_x, train_names = speaker_features(frames, args.train, **opts)
        val_x, val_names = speaker_features(frames, args.val, **opts)
    else:
        if args.alignments is None:
            raise ConfigError("the phone probe needs --alignments (utterance p_0 p_1 ... per line)")
        aligned = read_alignments(args.alignments)
        train_x, train_names = phone_features(frames, args.train, aligned, **opts)
        val_x, val_names = phone_features(frames, args.val, aligned, **opts)
    train_y, val_y, keep, classes = encode_labels(train_names, val_names)
    probe = train_probe(train_x, train_y, num_classes=len(classes), epochs=args.epochs, lr=args.lr,
                        batch_size=args.probe_batch)
    acc = probe_accuracy(probe, val_x[keep], val_y)
    unseen = f", {int((~keep).sum())} val rows of unseen classes left out" if not keep.all() else ""
    print(f"{args.eval_command} probe, {what}: {len(train_y)} train / {len(val_y)} val rows, {len(classes)} "
          f"classes{unseen}: top-1 {acc:.2f}")
    return 0


def add_speech_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Adds `speaker` and `phone` to an `eval` group (used by `mmssl audio eval`)."""
    for name, help_text in (("speaker", "speaker identification, linear on the last context vector"),
                            ("phone", "frame-level phone classification, linear on every context vector")):
        q = subparsers.add_parser(name, help=help_text, description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("--checkpoint", type=Path, help="CPC pretraining checkpoint (leave out for a random init)")
        q.add_argument("--train", required=True, help="training shards (folder, index.json or pattern)")
        q.add_argument("--val", required=True, help="validation shards")
        q.add_argument("--alignments", type=Path, help="phone labels per 10 ms frame (phone probe)")
        q.add_argument("--mfcc", action="store_true", help="the MFCC + linear baseline instead of an encoder")
        q.add_argument("--n-mfcc", type=int, default=13)
        q.add_argument("--level", choices=["c", "z"], default="c", help="contexts c_t (paper) or latents z_t")
        q.add_argument("--samples", type=int, default=20480, help="window read from the start of each clip")
        q.add_argument("--epochs", type=int, default=10)
        q.add_argument("--lr", type=float, default=2e-4)
        q.add_argument("--probe-batch", type=int, default=256, help="probe mini-batch (rows)")
        q.add_argument("--batch-size", type=int, default=32, help="clips per feature batch")
        q.add_argument("--workers", type=int, default=0)
        q.add_argument("--device", default=None)
        q.add_argument("overrides", nargs="*", help="encoder.key=value changes to the encoder config")
        q.set_defaults(func=run_speech_probe)
