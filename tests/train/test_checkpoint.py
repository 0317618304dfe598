import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmssl.train.checkpoint import (load_checkpoint, remove_stale_temporaries, rng_state, save_checkpoint,
                                    set_rng_state)

BIG = 16_000_000  # 64 MB of float32: each write takes tens of milliseconds, a window a 1 ms poll cannot miss

WRITER = f"""
import sys, torch
from mmssl.train.checkpoint import save_checkpoint
big = torch.arange({BIG}, dtype=torch.float32)  # known content: the parent checks every element it loads
i = 0
while True:
    i += 1
    save_checkpoint(sys.argv[1], {{"step": i, "big": big}})
    print(i, flush=True)  # only after save_checkpoint returned: checkpoint i is complete on disk
"""


def _kill_mid_write(path: Path) -> tuple[int, Path | None]:
    """Starts a child that saves to `path` in a loop; once it reported a complete save, kills it (SIGKILL, so no
    cleanup runs) while the temporary file of a later write exists. Returns the last step the child reported and
    the temporary file the kill left behind (None when the kill landed between two writes)."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    tmp = path.with_name(f".{path.name}.tmp-{proc.pid}")  # save_checkpoint's temporary name for that process
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "1", "the writer never finished a save"
        deadline = time.time() + 20
        # the next write has begun and put bytes in its file (a partial checkpoint, not just an empty name)
        while not (tmp.exists() and tmp.stat().st_size > 0) and time.time() < deadline:
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    printed = [int(line) for line in proc.stdout.read().split()]
    return (printed[-1] if printed else 1), (tmp if tmp.exists() else None)


def test_kill_during_write_leaves_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 0, "big": torch.zeros(3)})
    # the kill lands mid-write unless this process was descheduled between the poll and the kill (a loaded
    # machine) and the write ended meanwhile; then the test runs the child again rather than pass without having
    # tested anything
    for _ in range(3):
        last, tmp = _kill_mid_write(path)
        if tmp is not None and tmp.stat().st_size < path.stat().st_size:
            break
        if tmp is not None:
            tmp.unlink()  # a complete but unrenamed write: not the case under test, and not to be counted below
    assert tmp is not None and tmp.stat().st_size < path.stat().st_size, "three kills missed the writes"
    with pytest.raises(ValueError, match="unreadable"):
        load_checkpoint(tmp)  # the partial file is not a checkpoint
    # write last + 1 was under way (its temporary file is there, the child never reported it): the checkpoint is
    # the child's complete write `last`, never the partial one, and not the parent's step 0
    state = load_checkpoint(path)
    assert state["step"] == last >= 1
    assert state["big"].numel() == BIG and torch.equal(state["big"], torch.arange(BIG, dtype=torch.float32))
    assert remove_stale_temporaries(tmp_path) == [tmp] and not tmp.exists()  # what a resume clears first


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
