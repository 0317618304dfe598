"""The feed: loader + device stage + prefetch, as the recipe and the benchmarks use them. Loader workers run one
torch thread; on a CPU the device stage runs inside them; the position handed out resumes exactly."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from pipelines.feed import Feed
from pipelines.loader import StreamLoader
from pipelines.prefetch import DevicePrefetcher, tensors_of
from pipelines.sample import guarded
from numbered import decode, write_shards

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("feed-shards"))


def record_threads(sample):
    return {**sample, "threads": torch.get_num_threads(), "pid": os.getpid()}


def test_each_loader_worker_runs_one_torch_thread(shards):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the training process may use several; its workers must not inherit them
    try:
        loader = StreamLoader(str(shards), batch_size=6, stages=[decode, guarded(record_threads)], num_workers=2,
                              shuffle_window=8)
        batches = list(loader)
    finally:
        torch.set_num_threads(threads)
    pids = {p for b in batches for p in b["pid"].tolist()}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes did the work
    assert {t for b in batches for t in b["threads"].tolist()} == {1}


class Doubler:
    """A device stage: doubles `num` and says which process ran it; draws a per-sample value in the planner."""

    def planner(self, *, cut: bool = False):
        return guarded(lambda s: {**s, "drawn": s["num"] % 3})

    def __call__(self, batch, device):
        return {"num2": batch["num"].to(device) * 2, "drawn": batch["drawn"], "pid": os.getpid(),
                "__size__": batch["__size__"]}


@pytest.mark.parametrize("workers", [0, 2])
def test_on_a_cpu_the_device_stage_runs_in_the_workers(shards, workers):
    loader = StreamLoader(str(shards), batch_size=6, stages=[decode], num_workers=workers, shuffle_window=8)
    feed = Feed(loader, Doubler(), CPU)
    got = [next(feed) for _ in range(5)]  # one epoch of 30 samples
    feed.close()
    assert feed.in_workers and feed.prefetch == 0
    assert all(torch.equal(b["drawn"], b["num2"] // 2 % 3) for b in got)  # the planner ran in the workers too
    assert {b["pid"] for b in got} == ({os.getpid()} if workers == 0 else {b["pid"] for b in got} - {os.getpid()})
    assert sorted(n for b in got for n in (b["num2"] // 2).tolist()) == list(range(30))


def test_feed_position_resumes_exactly_with_prefetch_ahead(shards):
    def run(state=None, take=12):
        loader = StreamLoader(str(shards), batch_size=6, stages=[decode], num_workers=1, shuffle_window=8)
        feed = Feed(loader, Doubler(), CPU, prefetch=3, in_workers=False)  # the thread runs ahead of the consumer
        if state is not None:
            feed.load_state_dict(state)
        out, states = [], []
        for _ in range(take):
            out.append(next(feed)["num2"].tolist())
            states.append(feed.state_dict())
        feed.close()
        return out, states

    whole, states = run()  # 12 batches: two epochs and a bit
    assert states[2] == {"seed": 0, "epoch": 0, "samples_consumed": 18, "batch_size": 6}
    for cut in (2, 4, 7):
        rest, _ = run(states[cut], take=12 - cut - 1)
        assert rest == whole[cut + 1:]


def test_feed_passes_over_batches_whose_samples_were_all_skipped(tmp_path):
    bad = {f"k{n:04d}" for n in range(6, 12)}  # the second batch of the first epoch (no shuffling)
    source = write_shards(tmp_path / "s", counts=(6, 6, 6), bad=bad)
    loader = StreamLoader(str(source), batch_size=6, stages=[decode], shuffle_window=0, shuffle_shards=False,
                          max_skip_fraction=0.5)
    feed = Feed(loader, None, CPU)
    nums = [next(feed)["num"].tolist() for _ in range(3)]
    assert nums[0] == list(range(6)) and nums[1] == list(range(12, 18)) and nums[2] == list(range(6))


# -- the prefetch thread ----------------------------------------------------------------------------------------

def stage(batch: dict, device: torch.device) -> dict:
    from mmssl.tokens import Tokens

    x = batch["x"].to(device) * 2
    return {"tokens": Tokens(x.reshape(1, 4, 3), (2, 2), (1, 1), "image", visible=torch.tensor([[0, 2]])),
            "n": batch["n"]}


def test_prefetcher_yields_the_stage_output_in_order():
    source = [{"x": torch.full((12,), float(i)), "n": i} for i in range(5)]
    made = DevicePrefetcher(source, stage, CPU, depth=2)
    out = list(made)
    assert [o["n"] for o in out] == list(range(5))
    assert all(torch.equal(o["tokens"].patches, stage(s, CPU)["tokens"].patches) for o, s in zip(out, source))
    assert made.produced_s >= 0 and made.waited_s >= 0
    made.close()


def test_tensors_of_finds_the_tensors_inside_tokens():
    out = stage({"x": torch.zeros(12), "n": 0}, CPU)
    found = list(tensors_of({"a": [out["tokens"], (torch.ones(1),)], "b": "text"}))
    assert len(found) == 3 and found[0] is out["tokens"].patches and found[1] is out["tokens"].visible


def test_prefetcher_raises_the_stage_error_in_the_consumer():
    def broken(batch, device):
        raise ValueError(f"bad batch {batch['n']}")

    with pytest.raises(ValueError, match="bad batch 0"):
        next(iter(DevicePrefetcher([{"n": 0}], broken, CPU)))


def test_closing_the_prefetcher_stops_its_thread_and_source():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield {"x": torch.zeros(12), "n": i}
                i += 1
        finally:
            closed.set()

    made = DevicePrefetcher(endless(), stage, CPU, depth=2)
    assert [next(made)["n"] for _ in range(3)] == [0, 1, 2]
    made.close()
    assert not made.thread.is_alive() and closed.is_set()
