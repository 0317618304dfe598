"""Checkpoints written atomically, and the random states an exact resume needs.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed over the old one,
so a crash or `kill -9` during the write leaves the previous checkpoint intact and loadable.

One idea: the checkpoint file (its atomic write, its checked read, the random states it carries). Activation
checkpointing (recomputing activations in the backward pass) is a different idea and lives in
`mmssl.train.recompute`.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "remove_stale_temporaries", "rng_state", "set_rng_state"]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Writes `state` with torch.save to `path` atomically; returns the path.

    A failed write (a full disk, a folder that became read-only) leaves the previous checkpoint as it was, removes
    the partial file and raises an OSError that names the file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a short write as a RuntimeError
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
        raise OSError(f"could not write checkpoint {path} ({reason}); the previous one is kept: free some space "
                      f"or make the folder writable, then --resume") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Deletes the partial checkpoint files that writes killed mid-way (kill -9) left in `folder`."""
    stale = sorted(Path(folder).glob(".*.tmp-*")) if Path(folder).is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Reads a checkpoint; a missing or unreadable file is an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise ValueError(f"checkpoint {path} is unreadable: {err}") from None


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) random states."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # plain lists and tensors only, so checkpoints load with torch.load(weights_only=True)
    state = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                    gauss], "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what `rng_state` returned."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
