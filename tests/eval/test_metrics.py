"""Metrics against values derived by hand (the derivations are in the comments).

Every `pytest.approx` here compares a float64 ratio of small integer counts with the same fraction written out:
they differ by an ulp or so, far inside approx's 1e-6 relative; a wrong count moves a ratio by a whole count's
share, several percent.
"""

import math

import numpy as np
import pytest

from mmssl.eval import metrics


def block(shape, rows, cols):
    m = np.zeros(shape, dtype=bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


def test_region_iou_hand_cases() -> None:
    gt = block((4, 4), (0, 2), (0, 2))  # 4 pixels
    pred = block((4, 4), (0, 2), (0, 3))  # 6 pixels, 4 shared
    assert metrics.region_iou(gt, pred) == pytest.approx(4 / 6)
    empty = np.zeros((4, 4), bool)
    assert metrics.region_iou(gt, empty) == 0.0  # empty prediction: 0 / 4
    assert metrics.region_iou(empty, pred) == 0.0  # empty ground truth: 0 / 6
    assert metrics.region_iou(empty, empty) == 1.0  # nothing to find and nothing found
    void = block((4, 4), (0, 2), (2, 3))  # the 2 extra predicted pixels are void: 4 / 4
    assert metrics.region_iou(gt, pred, void) == 1.0
    void_gt = block((4, 4), (0, 1), (0, 2))  # void removes 2 shared pixels: 2 / 4
    assert metrics.region_iou(gt, pred, void_gt) == pytest.approx(2 / 4)


def test_boundary_map_of_a_square() -> None:
    m = block((5, 5), (1, 3), (1, 3))
    # a pixel differing from its right, lower or lower-right neighbour: the ring shifted towards the origin
    expected = {(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)}
    assert set(zip(*np.nonzero(metrics.boundary_map(m)))) == expected


def test_disk_matches_definition() -> None:
    d = metrics.disk(2)
    assert d.shape == (5, 5) and d.sum() == 13  # offsets with dx^2 + dy^2 <= 4
    assert metrics.disk(0).tolist() == [[True]]


def test_boundary_f_hand_cases() -> None:
    gt = block((5, 5), (1, 3), (1, 3))
    shifted = block((5, 5), (1, 3), (2, 4))
    assert metrics.boundary_f(gt, gt) == 1.0
    # tolerance 0 (bound_th * diagonal rounds up to 0): the shifted ring shares 4 of 8 pixels each way -> F = 0.5
    assert metrics.boundary_f(gt, shifted, bound_th=0.0) == pytest.approx(0.5)
    assert metrics.boundary_f(gt, shifted, bound_th=1) == 1.0  # within one pixel everything matches
    empty = np.zeros((5, 5), bool)
    assert metrics.boundary_f(gt, empty) == 0.0  # precision 1, recall 0
    assert metrics.boundary_f(empty, gt) == 0.0  # precision 0, recall 1
    assert metrics.boundary_f(empty, empty) == 1.0
    extra = gt | block((5, 5), (4, 5), (3, 5))  # a blob that lies wholly in void pixels
    assert metrics.boundary_f(gt, extra, block((5, 5), (4, 5), (3, 5)), bound_th=0.0) == 1.0


def test_boundary_tolerance_is_0008_of_the_diagonal() -> None:
    # 480 x 854: ceil(0.008 * hypot(480, 854)) = ceil(7.84) = 8 pixels
    gt = block((480, 854), (100, 300), (200, 500))
    assert metrics.boundary_f(gt, np.roll(gt, 8, axis=1)) == 1.0
    assert metrics.boundary_f(gt, np.roll(gt, 9, axis=1)) < 1.0


def test_davis_statistics() -> None:
    # n = 4: bin edges round(linspace(1, 4, 5)) - 1 = [0, 1, 2, 2, 3]; first bin v[0:2], last bin v[2:4]
    mean, recall, decay = metrics.davis_statistics([1.0, 0.8, 0.4, 0.2])
    assert mean == pytest.approx(0.6) and recall == pytest.approx(0.5) and decay == pytest.approx(0.9 - 0.3)
    assert all(math.isnan(x) for x in metrics.davis_statistics([]))


def test_pck_on_points() -> None:
    # joints (0, 0) and (30, 40): box diagonal 50, reference 0.6 * 50 = 30 px; thresholds 3 px and 6 px
    gt = np.array([[[0, 0], [30, 40]], [[0, 0], [30, 40]]], dtype=float)
    pred = np.array([[[2.9, 0], [30, 45]], [[0, 0], [37, 40]]], dtype=float)
    out = metrics.pck(pred, gt, (0.1, 0.2))
    # joint 0 right in both frames at both thresholds; joint 1 errors 5 and 7 px: 0/2 at 3 px, 1/2 at 6 px
    assert out["PCK@0.1"] == pytest.approx(50.0) and out["PCK@0.2"] == pytest.approx(75.0)
    # a third, hidden joint far away changes neither the box nor the score
    gt3 = np.concatenate([gt, np.full((2, 1, 2), 300.0)], axis=1)
    pred3 = np.concatenate([pred, np.zeros((2, 1, 2))], axis=1)
    visible = np.array([[True, True, False]] * 2)
    assert metrics.pck(pred3, gt3, (0.1, 0.2), visible=visible) == out
    assert metrics.pck(pred3, gt3, (0.1, 0.2)) != out


def test_confusion_and_miou() -> None:
    gt = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 255])
    pred = np.array([0, 0, 0, 1, 0, 0, 1, 1, 1, 1, 2])
    conf = metrics.confusion_matrix(gt, pred, 3)
    assert conf.tolist() == [[3, 1, 0], [2, 4, 0], [0, 0, 0]]  # the void pixel is not counted
    miou, per_class = metrics.mean_iou(conf)
    # class 0: 3 / (4 + 5 - 3); class 1: 4 / (6 + 5 - 4); class 2 absent on both sides -> NaN, skipped
    assert per_class[0] == pytest.approx(0.5) and per_class[1] == pytest.approx(4 / 7) and math.isnan(per_class[2])
    assert miou == pytest.approx((0.5 + 4 / 7) / 2)
