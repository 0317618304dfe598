"""The k-NN and linear probe comparison: the checkpoint, its architecture at a seeded random init, and the raw
input, probed on the same samples and printed as one `Comparison` table in percent.

Inputs follow the checkpoint's training (`mmssl.eval.inputs`). Every source reads the same batches in one pass
(`recipes.eval_data.labelled_features`); the random init is drawn from a fixed seed and the probes have no random
state of their own (k-NN is exact, the linear probe starts from zero weights), so two runs print the same table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from mmssl.config import ConfigError
from mmssl.eval.encoders import checkpoint_encoder_config, load_encoder, read_checkpoint
from mmssl.eval.features import Extractor, pooled_extractor
from mmssl.eval.inputs import EvalInputs, eval_inputs
from mmssl.eval.knn import knn_scores, topk_accuracy
from mmssl.eval.linear import evaluate_probe
from mmssl.eval.logistic import fit_probe
from mmssl.eval.raw import raw_extractor, standardise
from mmssl.eval.table import Comparison, architecture
from recipes.eval_data import labelled_features

__all__ = ["ProbeSettings", "probe_comparison", "check_probe_settings"]

METRICS = ["top-1", "top-5"]


@dataclass(frozen=True)
class ProbeSettings:
    """What a k-NN or linear probe run reads and how it probes.

    Attributes:
        probe: "knn" or "linear".
        train: labelled training shards.
        val: labelled held-out shards.
        checkpoint: the pretraining checkpoint, or None for a random init of `encoder_config`.
        encoder_config: the encoder's `_component_` mapping without a checkpoint.
        encoder_overrides: `key=value` changes to the encoder config (relative keys, e.g. "depth=2").
        modality: explicit `modality.*` input fields, e.g. {"size": [64, 64]}.
        k: neighbours of the k-NN vote (DINO: 20).
        temperature: temperature of the k-NN vote weights (DINO: 0.07).
        l2: the linear probe's weight penalty; None chooses it on a seeded held-out fifth of the training rows.
        seed: seed of the random init.
        baselines: add the random-init and raw-input rows.
        batch_size: samples per feature batch.
        workers: loader workers.
        device: where features are computed.
    """

    probe: str
    train: str
    val: str
    checkpoint: Path | None = None
    encoder_config: Mapping[str, Any] | None = None
    encoder_overrides: Sequence[str] = ()
    modality: Mapping[str, Any] = field(default_factory=dict)
    k: int = 20
    temperature: float = 0.07
    l2: float | None = None
    seed: int = 0
    baselines: bool = True
    batch_size: int = 64
    workers: int = 2
    device: str = "cpu"


def _sources(settings: ProbeSettings) -> tuple[list[tuple[str, str, nn.Module | None]], Mapping | None]:
    """(row name, what, encoder) per encoder row, and the checkpoint's run config (None without a checkpoint)."""
    rows, config, enc_config = [], None, settings.encoder_config
    if settings.checkpoint is not None:
        ckpt = read_checkpoint(settings.checkpoint)
        config = ckpt.get("config") if isinstance(ckpt.get("config"), Mapping) else None
        enc_config = checkpoint_encoder_config(settings.checkpoint, ckpt)
        trained = load_encoder(settings.checkpoint, overrides=settings.encoder_overrides)
        rows.append(("checkpoint", f"{settings.checkpoint} ({architecture(trained, enc_config)})", trained))
    if settings.baselines or settings.checkpoint is None:
        twin = load_encoder(settings.checkpoint, None if settings.checkpoint else enc_config,
                            overrides=settings.encoder_overrides, random_init=True, seed=settings.seed)
        rows.append(("random init", f"{architecture(twin, enc_config)}, seed {settings.seed}", twin))
    return rows, config


def _knn(train: Tensor, train_y: Tensor, val: Tensor, val_y: Tensor, classes: int, s: ProbeSettings) -> dict:
    acc = topk_accuracy(knn_scores(train, train_y, val, k=s.k, temperature=s.temperature, num_classes=classes),
                        val_y)
    return {"top-1": acc["top1"], "top-5": acc["top5"]}


def _linear(train: Tensor, train_y: Tensor, val: Tensor, val_y: Tensor, classes: int, s: ProbeSettings) -> dict:
    fit = fit_probe(train, train_y, num_classes=classes, l2=s.l2, seed=s.seed)
    acc = evaluate_probe(fit.probe, val, val_y)
    return {"top-1": acc["top1"], "top-5": acc["top5"], "iterations": fit.iterations, "l2": fit.l2}


def probe_comparison(settings: ProbeSettings, *, log: Callable[[str], None] = print) -> Comparison:
    """Probes every feature source of `settings` and returns the filled table (not yet printed or written)."""
    if settings.probe not in ("knn", "linear"):
        raise ValueError(f"probe must be 'knn' or 'linear', got {settings.probe!r}")
    check_probe_settings(settings)
    device = torch.device(settings.device)
    encoders, config = _sources(settings)
    explicit_modality = any(o.split("=", 1)[0].strip() == "modality" for o in settings.encoder_overrides)
    inputs: EvalInputs = eval_inputs(encoders[0][2], config, modality=dict(settings.modality),
                                     encoder_modality=explicit_modality)
    log(inputs.describe())
    extractors: dict[str, Extractor] = {}
    whats: dict[str, str] = {}
    for name, what, encoder in encoders:
        extractors[name] = pooled_extractor(encoder.eval().to(device))
        whats[name] = what
    raw = None
    if settings.baselines:
        raw, raw_what, extract = raw_extractor(inputs)
        extractors[raw], whats[raw] = extract, raw_what
    read = dict(batch_size=settings.batch_size, workers=settings.workers, device=device)
    train, train_y = labelled_features(settings.train, extractors, inputs, **read)
    val, val_y = labelled_features(settings.val, extractors, inputs, **read)
    classes = int(max(train_y.max(), val_y.max())) + 1
    if settings.probe == "knn":
        task = f"weighted k-NN (k={settings.k}, T={settings.temperature})"
    else:
        penalty = "L2 chosen on a held-out fifth of train" if settings.l2 is None else f"L2 {settings.l2:g}"
        task = f"linear probe (logistic regression, L-BFGS to convergence, {penalty}, standardised features)"
    table = Comparison(task=f"{task} on {len(train_y)} train / {len(val_y)} val samples, {classes} classes",
                       metrics=list(METRICS), settings=_settings(settings, inputs))
    score = _knn if settings.probe == "knn" else _linear
    for name in extractors:
        a, b = train[name], val[name]
        if name == raw and settings.probe == "knn":
            a, b = standardise(a, b)  # the linear probe standardises every source itself
        result = score(a, train_y, b, val_y, classes, settings)
        if "iterations" in result:
            table.settings.setdefault("lbfgs_iterations", {})[name] = int(result.pop("iterations"))
            table.settings.setdefault("l2_chosen", {})[name] = float(result.pop("l2"))
        table.add(name, whats[name], result)
    return table


def _settings(s: ProbeSettings, inputs: EvalInputs) -> dict[str, Any]:
    out = {"probe": s.probe, "train": str(s.train), "val": str(s.val),
           "checkpoint": None if s.checkpoint is None else str(s.checkpoint), "seed": s.seed,
           "input": {"kind": inputs.kind, "size": list(inputs.size), "patch": list(inputs.spec.patch),
                     "from": inputs.origin, "trained": None if inputs.trained is None else list(inputs.trained)}}
    if inputs.kind == "video":
        out["input"]["clip_stride"] = inputs.clip_stride
    if inputs.kind in ("audio", "waveform"):
        out["input"]["samples"] = inputs.samples
    out.update({"k": s.k, "temperature": s.temperature} if s.probe == "knn" else {"l2": s.l2})
    if s.encoder_overrides:
        out["encoder_overrides"] = list(s.encoder_overrides)
    return out


def check_probe_settings(settings: ProbeSettings) -> None:
    """Raises ConfigError for settings no run can use (checked before any shard is read)."""
    if settings.k < 1 or settings.temperature <= 0 or (settings.l2 is not None and settings.l2 < 0):
        raise ConfigError(f"k must be >= 1, temperature > 0 and l2 >= 0 (got k={settings.k}, "
                          f"temperature={settings.temperature}, l2={settings.l2})")
