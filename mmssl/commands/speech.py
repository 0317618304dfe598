"""`mmssl audio eval speaker|phone`: linear speech probes of an audio encoder beside its baselines.

    mmssl audio eval speaker --checkpoint CKPT --train SHARDS --val SHARDS
    mmssl audio eval phone --checkpoint CKPT --train SHARDS --val SHARDS --alignments converted_aligned_phones.txt
    mmssl audio eval speaker --mfcc --train SHARDS --val SHARDS          # the MFCC + linear baseline alone

One table, in percent: the checkpoint (CPC speech or Audio-MAE), the same architecture at a seeded random init,
and MFCCs, each read on the window (and fbank) the checkpoint's config says training used. The probe is logistic
regression solved to convergence (L-BFGS, L2 chosen on a held-out fifth of the training rows): no epochs to tune,
and two runs print the same table. The table is written as CSV and JSON to --out (default: <run_dir>/eval/ for
<run_dir>/checkpoints/*.pt, else eval/ beside the checkpoint, else ./eval). Speaker ids come from the shards'
json `speaker`, else from `.cls`. Without --checkpoint the random-init row is CPC's default encoder changed by
`encoder.*` overrides.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mmssl.config import ConfigError
from mmssl.launch import resolve

__all__ = ["add_speech_parsers", "run_speech_probe"]

POOL_TEXT = {"last": "last frame", "mean": "clip mean", "mean+std": "clip mean+std"}


def run_speech_probe(args: argparse.Namespace) -> int:
    """Extracts frozen features of --train and --val for every row, fits the probes, prints and writes the table."""
    from mmssl.eval.speech import encode_labels, read_alignments
    from mmssl.eval.logistic import fit_probe, probe_accuracy, train_probe
    from mmssl.eval.speech_sources import SpeechInput, encoder_sources, mfcc_source
    from mmssl.eval.table import Comparison, default_out_dir

    speaker_features = resolve("recipes.eval_data:speaker_features")  # the shard loaders are recipes'
    phone_features = resolve("recipes.eval_data:phone_features")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    items = [item[len("encoder."):] if item.startswith("encoder.") else item for item in args.overrides]
    if args.lr is not None and args.epochs is None:
        raise ConfigError("--lr sets the fixed Adam schedule of --epochs; give both, or neither for L-BFGS")
    if args.eval_command == "phone" and args.alignments is None:
        raise ConfigError("the phone probe needs --alignments (utterance p_0 p_1 ... per line)")
    if args.mfcc:
        if args.checkpoint or items:
            raise ConfigError("--mfcc uses no encoder; drop --checkpoint and encoder.* overrides")
        sources, notes = [], []
        speech = SpeechInput(args.samples or 20480, None, "--samples" if args.samples else "CPC's default window")
    else:
        sources, speech, notes = encoder_sources(args.checkpoint, overrides=items, level=args.level,
                                                 samples=args.samples, seed=args.seed, device=device)
    sources.append(mfcc_source(args.n_mfcc))
    print(f"input: {speech.describe()}")
    for note in notes:
        print(note)

    opts = dict(samples=speech.samples, batch_size=args.batch_size, workers=args.workers, device=device)
    if args.eval_command == "speaker":
        pooled = {s.name: (s.frames, s.pool) for s in sources}
        train_x, train_names = speaker_features(pooled, args.train, **opts)
        val_x, val_names = speaker_features(pooled, args.val, **opts)
        unit, label = "clips", "speakers"
    else:
        aligned = read_alignments(args.alignments)
        frames = {s.name: s.frames for s in sources}
        train_x, train_names = phone_features(frames, args.train, aligned, **opts)
        val_x, val_names = phone_features(frames, args.val, aligned, **opts)
        unit, label = "frames", "phones"
    train_y, val_y, keep, classes = encode_labels(train_names, val_names)
    if args.epochs is None:
        chosen = "L2 chosen on a held-out fifth of train" if args.l2 is None else f"L2 {args.l2:g}"
        how = f"logistic regression (L-BFGS to convergence, {chosen})"
    else:
        how = f"linear, Adam {args.epochs} epochs at lr {args.lr or 2e-4}, batch {args.probe_batch}"
    unseen = f" ({int((~keep).sum())} val {unit} of unseen {label} left out)" if not keep.all() else ""
    table = Comparison(task=f"{args.eval_command} probe: {how} on {len(train_y)} train / {len(val_y)} val {unit}, "
                            f"{len(classes)} {label}{unseen}; {speech.samples / 16000:.2f} s windows",
                       metrics=["top-1"],
                       settings={"window_samples": speech.samples, "fbank": speech.fbank, "input": speech.origin,
                                 "train": args.train, "val": args.val, "seed": args.seed, "epochs": args.epochs,
                                 "lr": args.lr, "l2": args.l2, "level": args.level, "n_mfcc": args.n_mfcc})
    for source in sources:
        what = source.what + (f", {POOL_TEXT[source.pool]}" if args.eval_command == "speaker" else "")
        if args.epochs is None:
            fit = fit_probe(train_x[source.name], train_y, num_classes=len(classes), l2=args.l2, seed=args.seed)
            probe, what = fit.probe, f"{what}; {fit.describe()}"
        else:
            probe = train_probe(train_x[source.name], train_y, num_classes=len(classes), epochs=args.epochs,
                                lr=args.lr or 2e-4, batch_size=args.probe_batch, seed=args.seed)
        table.add(source.name, what, {"top-1": probe_accuracy(probe, val_x[source.name][keep], val_y)})
    print(table.format())
    csv_path, json_path = table.write(args.out or default_out_dir(args.checkpoint), args.eval_command)
    print(f"wrote {csv_path} and {json_path}")
    return 0


def add_speech_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Adds `speaker` and `phone` to an `eval` group (used by `mmssl audio eval`)."""
    for name, help_text in (("speaker", "speaker identification, linear on one pooled vector per clip"),
                            ("phone", "frame-level phone classification, linear on every 10 ms frame")):
        q = subparsers.add_parser(name, help=help_text, description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("--checkpoint", type=Path, help="CPC speech or Audio-MAE checkpoint (leave out for a random "
                       "init of CPC's default encoder)")
        q.add_argument("--train", required=True, help="training shards (folder, index.json or pattern)")
        q.add_argument("--val", required=True, help="validation shards")
        q.add_argument("--alignments", type=Path, help="phone labels per 10 ms frame (phone probe)")
        q.add_argument("--mfcc", action="store_true", help="only the MFCC + linear baseline")
        q.add_argument("--n-mfcc", type=int, default=13)
        q.add_argument("--level", choices=["c", "z"], default=None, help="CPC: contexts c_t (the default, as the "
                       "paper) or latents z_t")
        q.add_argument("--samples", type=int, default=None, help="window read from the start of each clip "
                       "(default: the checkpoint's training window; 20480 without a checkpoint)")
        q.add_argument("--l2", type=float, default=None, help="the probe's L2 penalty (default: chosen per row)")
        q.add_argument("--epochs", type=int, default=None, help="train with CPC_audio's fixed Adam schedule for "
                       "this many epochs instead of solving with L-BFGS")
        q.add_argument("--lr", type=float, default=None, help="Adam's learning rate with --epochs (2e-4)")
        q.add_argument("--probe-batch", type=int, default=256, help="Adam mini-batch (rows) with --epochs")
        q.add_argument("--seed", type=int, default=0, help="seed of the random init, the L2 split and Adam")
        q.add_argument("--batch-size", type=int, default=32, help="clips per feature batch")
        q.add_argument("--workers", type=int, default=0)
        q.add_argument("--device", default=None)
        q.add_argument("--out", type=Path, default=None, help="folder for <probe>.csv and <probe>.json (default: "
                       "<run_dir>/eval beside the checkpoint, else ./eval)")
        q.add_argument("overrides", nargs="*", help="encoder.key=value changes to the encoder config")
        q.set_defaults(func=run_speech_probe)
