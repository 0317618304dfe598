import torch

from mmssl.rng import sample_generator, sample_rng, sample_seed


def test_seed_is_a_pure_function_of_its_inputs() -> None:
    assert sample_seed(1, 0, "abc", 0) == sample_seed(1, 0, "abc", 0)
    seeds = {sample_seed(s, e, k, v) for s in (0, 1) for e in (0, 1) for k in ("a", "b") for v in (0, 1)}
    assert len(seeds) == 16


def test_generators_repeat() -> None:
    assert sample_rng(0, 1, "k").random() == sample_rng(0, 1, "k").random()
    a = torch.rand(3, generator=sample_generator(0, 1, "k", "crop"))
    assert torch.equal(a, torch.rand(3, generator=sample_generator(0, 1, "k", "crop")))
