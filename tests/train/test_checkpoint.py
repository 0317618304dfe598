import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmssl.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

WRITER = """
import sys, torch
from mmssl.train.checkpoint import save_checkpoint
big = torch.randn(40_000_000)  # 160 MB: the write takes long enough to be interrupted
i = 0
while True:
    i += 1
    save_checkpoint(sys.argv[1], {"step": i, "big": big})
    print(i, flush=True)
"""


def test_kill_during_write_leaves_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 0, "big": torch.zeros(3)})
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(tmp_path.glob(".last.pt.tmp-*")):
        time.sleep(0.005)  # wait until a write is under way
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(path)
    assert state["step"] >= 0 and state["big"].numel() in (3, 40_000_000)


def test_rng_state_round_trip() -> None:
    state = rng_state()
    a = torch.rand(3)
    set_rng_state(state)
    assert torch.equal(torch.rand(3), a)


def test_missing_and_corrupt_checkpoint_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(bad)
