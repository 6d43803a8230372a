"""ERF metrics on maps whose answers are known by hand or in closed form.

Covers: Luo's size (threshold, sqrt in 2-D, count in 1-D) on a hand-made map; Luo eq. 11 (std of
the uniform-kernel ERF is sqrt(n (k^2 - 1) / 12)) through ``marginal_std``; the Gaussian fit
recovering known sigmas with R^2 = 1, and a poor R^2 on a box; RepLKNet area ratios on a delta and
a uniform map; centre of mass; ERF/TRF ratios; property tests of invariances (scale, flip).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rfgraph.metrics import (
    LUO_FRACTION,
    area_ratios,
    centre_of_mass,
    compute_metrics,
    gaussian_fit,
    luo_erf_size,
    marginal_std,
    metrics_dict,
)


def test_luo_size_counts_pixels_above_threshold() -> None:
    """5x5 map, centre 100: values above 4.55 count (7 of them): size sqrt(7)."""
    m = np.zeros((5, 5))
    m[2, 2] = 100
    m[1, 2] = m[3, 2] = m[2, 1] = m[2, 3] = 10
    m[0, 0] = 4.6  # just above (1 - 0.9545) * 100 = 4.55
    m[4, 4] = 4.5  # just below
    m[0, 4] = 50
    count, size = luo_erf_size(m, 100.0)
    assert count == 7 and size == pytest.approx(math.sqrt(7))
    assert compute_metrics(m).erf_size == pytest.approx(math.sqrt(7))


def test_luo_size_in_1d_is_a_length() -> None:
    """1-D map: the size is the count itself (no square root)."""
    m = np.array([0, 1, 5, 10, 100, 10, 5, 1, 0.0])
    assert luo_erf_size(m, 100.0) == (5, 5.0)
    assert compute_metrics(m).erf_size == 5.0


@pytest.mark.parametrize("k,n", [(2, 4), (3, 5), (5, 7)])
def test_uniform_kernel_std_is_luo_eq_11(k: int, n: int) -> None:
    """The ERF of n all-ones k-kernels has per-axis std sqrt(n (k^2 - 1) / 12) exactly."""
    c = np.array([1.0])
    for _ in range(n):
        c = np.convolve(c, np.ones(k))
    erf2d = np.outer(c, c)
    expected = math.sqrt(n * (k * k - 1) / 12)
    assert marginal_std(c)[0] == pytest.approx(expected, rel=1e-12)
    assert marginal_std(erf2d) == pytest.approx((expected, expected), rel=1e-12)


def test_gaussian_fit_recovers_sigmas() -> None:
    """A sampled anisotropic Gaussian off-centre: mu, sigma recovered, R^2 = 1."""
    h, w = np.meshgrid(np.arange(41.0), np.arange(45.0), indexing="ij")
    m = 3.0 * np.exp(-((h - 18) ** 2 / (2 * 2.5 ** 2) + (w - 24) ** 2 / (2 * 4.0 ** 2)))
    fit = gaussian_fit(m)
    assert fit is not None
    assert fit.mu == pytest.approx((18, 24), abs=1e-6)
    assert fit.sigma == pytest.approx((2.5, 4.0), rel=1e-6)
    assert fit.radius == pytest.approx(math.sqrt(2.5 * 4.0), rel=1e-6)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)
    assert fit.amplitude == pytest.approx(3.0, rel=1e-6)


def test_gaussian_fit_is_poor_on_a_box() -> None:
    """A flat square is far from Gaussian: R^2 clearly below a Gaussian's."""
    m = np.zeros((31, 31))
    m[5:26, 5:26] = 1.0
    fit = gaussian_fit(m)
    assert fit is not None and fit.r2 < 0.95


def test_area_ratios_on_delta_and_uniform_maps() -> None:
    """Delta: side 1 for every t.  Uniform 21x21: the smallest odd s with s^2/441 > t."""
    delta = np.zeros((21, 21))
    delta[10, 10] = 1
    assert [a.side for a in area_ratios(delta, (10, 10))] == [1, 1, 1, 1]
    flat = np.ones((21, 21))
    got = {a.t: (a.side, a.ratio) for a in area_ratios(flat, (10, 10))}
    for t, (side, ratio) in got.items():
        expected = next(s for s in range(1, 22, 2) if s * s / 441 > t)
        assert side == expected and ratio == pytest.approx(expected ** 2 / 441)


def test_area_ratio_off_centre_mass_and_empty_map() -> None:
    """Mass in a corner: only the square covering the whole map holds it; an empty map: None."""
    m = np.zeros((9, 9))
    m[0, 0] = 1.0
    sides = [a.side for a in area_ratios(m, (4, 4))]
    assert sides == [9, 9, 9, 9]
    # off the map's centre, the square is clipped by the border: its area inside the map, never
    # more than the map (a ratio of 289/81 = 3.6 was printed for side 17 before)
    got = area_ratios(m, (8, 8))
    assert [(a.side, a.ratio) for a in got] == [(17, 1.0)] * 4
    line = np.zeros(20)
    line[[3, 15]] = 1.0  # unit at 15: the window [15 - i, 15 + i] reaches pixel 3 at i = 12
    half = area_ratios(line, (15,), thresholds=(0.4, 0.6))
    assert [(a.side, a.ratio) for a in half] == [(1, 1 / 20), (25, 17 / 20)]
    empty = area_ratios(np.zeros((5, 5)), (2, 2))
    assert all(a.side is None and a.ratio is None for a in empty)


def test_centre_of_mass_and_trf_ratio() -> None:
    """Two point masses 1 and 3: the centre of mass is at 3/4 of the way; ERF/TRF by definition."""
    m = np.zeros((7, 9))
    m[1, 2] = 1.0
    m[5, 6] = 3.0
    assert centre_of_mass(m) == pytest.approx((4.0, 5.0))
    met = compute_metrics(m, centre=(5, 6), trf_size=(9, 16))
    assert met.centre_value == 3.0
    assert met.erf_size == pytest.approx(math.sqrt(2))  # 1 > 0.0455 * 3
    assert met.erf_trf_ratio == pytest.approx(math.sqrt(2) / 12)
    assert met.per_axis_erf_trf == pytest.approx((5 / 9, 5 / 16))
    d = metrics_dict(met)
    assert d["erf_trf_ratio"] == met.erf_trf_ratio and len(d["area_ratios"]) == 4


def test_centre_between_pixels_takes_the_largest_neighbour() -> None:
    """An even-sized field's centre lies between pixels: the largest of the nearest ones counts."""
    m = np.zeros((4, 4))
    m[1, 2] = 8.0
    m[2, 1] = 2.0
    assert compute_metrics(m, centre=(1.5, 1.5)).centre_value == 8.0


@settings(max_examples=15, deadline=None)
@given(st.integers(3, 15), st.integers(3, 15), st.floats(1e-3, 1e3), st.integers(0, 2**31 - 1))
def test_metrics_invariant_to_scale_and_consistent_under_flip(h: int, w: int, scale: float,
                                                              seed: int) -> None:
    """Scaling the map changes no size metric; flipping it mirrors the centre of mass."""
    m = np.random.default_rng(seed).random((h, w))
    a, b = compute_metrics(m), compute_metrics(m * scale)
    assert a.luo_count == b.luo_count and a.erf_extent == b.erf_extent
    assert [r.side for r in a.area_ratios] == [r.side for r in b.area_ratios]
    flipped = compute_metrics(m[::-1, ::-1])
    assert flipped.centre_of_mass == pytest.approx((h - 1 - a.centre_of_mass[0],
                                                    w - 1 - a.centre_of_mass[1]))
    assert flipped.luo_count == a.luo_count
    assert 0 <= a.luo_count <= h * w
    assert LUO_FRACTION == 0.9545


def test_a_fit_that_explains_little_is_left_out_of_the_table() -> None:
    """A Gaussian blob: R^2 ~ 1, sigma shown (3 x 3); a checkerboard: R^2 < 0.5, sigma and radius
    left out of the table (were printed, e.g. 2472 x 4632 px on a 64 px SwinV2 map), the R^2 kept."""
    from rfgraph.metrics import POOR_FIT_R2, compute_metrics, metric_rows

    y, x = np.mgrid[0:31, 0:31]
    blob = np.exp(-((y - 15) ** 2 + (x - 15) ** 2) / (2 * 3.0 ** 2))
    board = ((y + x) % 2).astype(float) + 0.01
    good, bad = ({n: v for n, v, _ in metric_rows(compute_metrics(m))} for m in (blob, board))
    assert good["gaussian_sigma"] == "3 x 3" and float(good["gaussian_r2"]) > 0.99
    assert float(bad["gaussian_r2"]) < POOR_FIT_R2
    assert bad["gaussian_sigma"] == "-" and bad["gaussian_radius"] == "-"
