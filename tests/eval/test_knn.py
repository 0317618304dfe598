import numpy as np
import torch

from mmssl.eval.knn import knn_scores, topk_accuracy


def brute_knn(train, labels, test, k, t, c):
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    out = np.zeros((len(test), c))
    for i, q in enumerate(test):
        sim = train @ q
        for j in np.argsort(-sim)[:k]:
            out[i, labels[j]] += np.exp(sim[j] / t)
    return out


def test_weighted_knn_equals_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(200, 16, generator=g), torch.randn(37, 16, generator=g)
    labels = torch.randint(0, 5, (200,), generator=g)
    ours = knn_scores(train, labels, test, k=20, temperature=0.07, chunk=8)
    ref = brute_knn(train.numpy(), labels.numpy(), test.numpy(), 20, 0.07, 5)
    # float32 cosines over 16 dims (~1e-7 off) divided by temperature 0.07 and exponentiated: relative error ~1e-6
    # in each weight (measured 2.4e-6 at worst against float64)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4)


def test_topk_accuracy() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.2], [0.3, 0.2, 0.1]])
    acc = topk_accuracy(scores, torch.tensor([1, 2, 2]), ks=(1, 2, 5))
    # percentages of 1 and 2 in 3, computed in float32: ~4e-6 off at 66.7
    assert abs(acc["top1"] - 100 / 3) < 1e-4 and abs(acc["top2"] - 200 / 3) < 1e-4 and acc["top5"] == 100.0
