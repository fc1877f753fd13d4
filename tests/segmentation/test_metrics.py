"""Metrics against brute force: all pairs of boundary points, anisotropic spacing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from segmentation import metrics
from segmentation.errors import MetricError


def _brute_boundary(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour outside the mask or outside the image."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for r in range(h):
        for c in range(w):
            if not mask[r, c]:
                continue
            for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                rr, cc = r + dr, c + dc
                if not (0 <= rr < h and 0 <= cc < w) or not mask[rr, cc]:
                    out[r, c] = True
                    break
    return out


def _brute_directed(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    pa = np.argwhere(_brute_boundary(a)) * np.asarray(spacing)
    pb = np.argwhere(_brute_boundary(b)) * np.asarray(spacing)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return d.min(axis=1)


def _random_shape(rng, h, w) -> np.ndarray:
    m = ndimage.gaussian_filter(rng.random((h, w)), 2.0) > 0.5
    return m


@pytest.mark.parametrize("seed", range(8))
def test_assd_hd95_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    spacing = (float(rng.uniform(0.2, 1.0)), float(rng.uniform(0.2, 1.0)))  # anisotropic
    a, b = _random_shape(rng, 24, 30), _random_shape(rng, 24, 30)
    if not a.any() or not b.any():
        pytest.skip("degenerate random shape")
    assert np.array_equal(metrics.boundary(a), _brute_boundary(a))
    ab, ba = _brute_directed(a, b, spacing), _brute_directed(b, a, spacing)
    expected_assd = (ab.sum() + ba.sum()) / (ab.size + ba.size)
    expected_hd95 = max(np.percentile(ab, 95), np.percentile(ba, 95))
    assert metrics.assd_mm(a, b, spacing) == pytest.approx(expected_assd, rel=1e-9, abs=1e-9)
    assert metrics.hd95_mm(a, b, spacing) == pytest.approx(expected_hd95, rel=1e-9, abs=1e-9)
    assert metrics.assd_mm(b, a, spacing) == pytest.approx(expected_assd, rel=1e-9)  # symmetric


@pytest.mark.parametrize("seed", range(5))
def test_overlap_metrics_match_counting(seed):
    rng = np.random.default_rng(100 + seed)
    a, b = _random_shape(rng, 32, 32), _random_shape(rng, 32, 32)
    tp, fp, fn = int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum())
    assert metrics.dice(a, b) == pytest.approx((2 * tp + 1e-7) / (2 * tp + fp + fn + 1e-7))
    assert metrics.iou(a, b) == pytest.approx((tp + 1e-7) / (tp + fp + fn + 1e-7))
    c = metrics.confusion(np.stack([a, b]), np.stack([b, b]), per_frame=True)
    assert c.tp.tolist() == [tp, int(b.sum())] and c.fp.tolist() == [fp, 0] and c.fn.tolist() == [fn, 0]
    assert (c.tp + c.fp + c.fn + c.tn).tolist() == [1024, 1024]
    assert metrics.dice_from_counts(c)[1] == pytest.approx(1.0)


def test_known_geometry_and_units():
    a = np.zeros((50, 50), bool)
    a[10:20, 10:20] = True
    b = np.roll(a, 3, axis=1)  # shifted 3 columns
    assert metrics.hd95_mm(a, b, (1.0, 0.5)) == pytest.approx(1.5)  # 3 px x 0.5 mm
    assert metrics.area_mm2(a, (0.5, 0.4)) == pytest.approx(100 * 0.2)
    assert metrics.dice(a, a) == pytest.approx(1.0) and metrics.assd_mm(a, a, (1, 1)) == 0.0


def test_empty_masks():
    e = np.zeros((10, 10), bool)
    f = e.copy()
    f[2:5, 2:5] = True
    assert metrics.dice(e, e) == 1.0 and metrics.iou(e, e) == 1.0
    assert metrics.assd_mm(e, e, (1, 1)) == 0.0 and metrics.hd95_mm(e, e, (1, 1)) == 0.0
    assert metrics.dice(e, f) < 1e-7 and metrics.dice(f, e) < 1e-7
    assert math.isnan(metrics.assd_mm(e, f, (1, 1))) and math.isnan(metrics.hd95_mm(f, e, (1, 1)))


def test_bad_inputs():
    with pytest.raises(MetricError, match="prediction shape"):
        metrics.dice(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(MetricError, match="spacing_mm must be two positive numbers"):
        metrics.assd_mm(np.ones((3, 3)), np.ones((3, 3)), (0.0, 1.0))


def _old_assd_hd95(pred: np.ndarray, gt: np.ndarray, spacing) -> tuple[float, float]:
    """The functions before issue 15, each running its own pair of distance transforms."""

    def directed() -> tuple[np.ndarray, np.ndarray] | None:
        if not pred.any() or not gt.any():
            return None
        bp, bg = metrics.boundary(pred), metrics.boundary(gt)
        return (ndimage.distance_transform_edt(~bg, sampling=spacing)[bp],
                ndimage.distance_transform_edt(~bp, sampling=spacing)[bg])

    empty = 0.0 if not pred.any() and not gt.any() else float("nan")
    d = directed()
    assd = empty if d is None else float((d[0].sum() + d[1].sum()) / (d[0].size + d[1].size))
    d = directed()
    hd95 = empty if d is None else float(max(np.percentile(d[0], 95), np.percentile(d[1], 95)))
    return assd, hd95


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("seed", range(12))
def test_surface_metrics_bit_identical_to_the_separate_functions(seed, monkeypatch):
    rng = np.random.default_rng(200 + seed)
    spacing = (float(rng.uniform(0.1, 1.2)), float(rng.uniform(0.1, 1.2)))  # anisotropic
    h, w = int(rng.integers(16, 48)), int(rng.integers(16, 48))
    a, b = _random_shape(rng, h, w), _random_shape(rng, h, w) & (rng.random((h, w)) > 0.05)  # ragged edges
    e = np.zeros((h, w), bool)
    calls = []
    edt = ndimage.distance_transform_edt
    monkeypatch.setattr(metrics.ndimage, "distance_transform_edt", lambda *x, **k: (calls.append(1), edt(*x, **k))[1])
    for p, g in ((a, b), (b, a), (a, a), (a, e), (e, b), (e, e)):
        old_assd, old_hd95 = _old_assd_hd95(p, g, spacing)
        calls.clear()
        s = metrics.surface_metrics(p, g, spacing)
        assert len(calls) == (2 if p.any() and g.any() else 0)  # one pair per frame, not two
        assert _same(s.assd_mm, old_assd) and _same(s.hd95_mm, old_hd95), (s, old_assd, old_hd95)
        assert _same(metrics.assd_mm(p, g, spacing), old_assd) and _same(metrics.hd95_mm(p, g, spacing), old_hd95)
    assert metrics.surface_metrics(e, e, spacing) == (0.0, 0.0)
    assert all(math.isnan(v) for v in metrics.surface_metrics(a, e, spacing) + metrics.surface_metrics(e, b, spacing))
