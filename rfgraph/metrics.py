"""Scalar summaries of an effective receptive field (ERF) map, each with the paper that defines it.

Conventions: the map is non-negative (absolute gradient summed over input channels, averaged over
runs; a signed map is summarised through its absolute value) and indexed by input pixel along
each spatial axis; ``centre`` is the input position of the chosen output unit's TRF centre (eq. 11
of Araujo et al.), defaulting to the middle of the map.  Every metric works on 1-D and 2-D maps;
those defined per axis are tuples, one value per spatial axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

LUO_FRACTION = 0.9545  # Luo et al. 2016, sec. 3.1: pixels above (1 - 0.9545) x centre are "in"
AREA_THRESHOLDS = (0.2, 0.3, 0.5, 0.99)  # RepLKNet (Ding et al. 2022), table 2


@dataclass(frozen=True)
class GaussianFit:
    """Axis-aligned Gaussian ``A exp(-sum_i (p_i - mu_i)^2 / (2 sigma_i^2))`` fitted to the map.

    ``radius`` is the 1-sigma radius (geometric mean of the sigmas); ``r2`` the coefficient of
    determination of the fit on the map (1 = perfect Gaussian; low values: not Gaussian).
    """

    mu: tuple[float, ...]
    sigma: tuple[float, ...]
    amplitude: float
    r2: float

    @property
    def radius(self) -> float:
        return float(math.prod(self.sigma) ** (1.0 / len(self.sigma)))


@dataclass(frozen=True)
class AreaRatio:
    """RepLKNet's high-contribution area: the smallest centred square (interval in 1-D) holding
    more than ``t`` of the total contribution; ``side`` in pixels, ``ratio`` = its area / map area."""

    t: float
    side: int | None
    ratio: float | None


@dataclass(frozen=True)
class ERFMetrics:
    """All metrics of one ERF map (see each field's definition in ``compute_metrics``)."""

    shape: tuple[int, ...]
    centre: tuple[float, ...]
    centre_value: float
    luo_count: int
    erf_size: float
    erf_extent: tuple[int, ...]
    gaussian: GaussianFit | None
    area_ratios: tuple[AreaRatio, ...]
    centre_of_mass: tuple[float, ...]
    marginal_std: tuple[float, ...]
    trf_size: tuple[int, ...] | None = None
    erf_trf_ratio: float | None = None
    per_axis_erf_trf: tuple[float, ...] | None = field(default=None)


def luo_erf_size(erf: np.ndarray, centre_value: float) -> tuple[int, float]:
    """Luo et al. sec. 3.1: count of pixels above (1 - 0.9545) x centre value; size = its n-th root
    over n axes (sqrt in 2-D: the side of the equivalent square; the count itself in 1-D, a length;
    the cube root in 3-D)."""
    thr = (1.0 - LUO_FRACTION) * centre_value
    count = int(np.count_nonzero(erf > thr)) if centre_value > 0 else 0
    size = float(count) ** (1.0 / erf.ndim)
    return count, size


def erf_extent(erf: np.ndarray, centre_value: float) -> tuple[int, ...]:
    """Per axis, the extent (max - min + 1) of the pixels above Luo's threshold (0 if none)."""
    mask = erf > (1.0 - LUO_FRACTION) * centre_value if centre_value > 0 else np.zeros_like(erf, bool)
    out = []
    for ax in range(erf.ndim):
        other = tuple(a for a in range(erf.ndim) if a != ax)
        hit = np.nonzero(mask.any(axis=other) if other else mask)[0]
        out.append(int(hit[-1] - hit[0] + 1) if hit.size else 0)
    return tuple(out)


def centre_value(erf: np.ndarray, centre: Sequence[float]) -> float:
    """Value of the map at ``centre``: the largest of the (up to 2^d) pixels nearest to it, since
    the centre of an even-sized field falls between pixels."""
    idx = []
    for c, n in zip(centre, erf.shape):
        cands = sorted({min(max(math.floor(c), 0), n - 1), min(max(math.ceil(c), 0), n - 1)})
        idx.append(cands)
    sub = erf[np.ix_(*idx)]
    return float(sub.max())


def centre_of_mass(erf: np.ndarray) -> tuple[float, ...]:
    """Per axis, sum(p * v) / sum(v) of the map (pixel coordinates)."""
    total = float(erf.sum())
    if total <= 0:
        return tuple(float("nan") for _ in erf.shape)
    return tuple(float((_marginal(erf, ax) * np.arange(n)).sum() / total)
                 for ax, n in enumerate(erf.shape))


def marginal_std(erf: np.ndarray) -> tuple[float, ...]:
    """Per axis, the standard deviation of the marginal distribution (Luo's eq. 11 compares it to
    sqrt(n (k^2 - 1) / 12) for uniform kernels)."""
    total = float(erf.sum())
    out = []
    for ax, n in enumerate(erf.shape):
        m = _marginal(erf, ax)
        if total <= 0:
            out.append(float("nan"))
            continue
        p = np.arange(n)
        mu = (m * p).sum() / total
        out.append(float(math.sqrt(max((m * (p - mu) ** 2).sum() / total, 0.0))))
    return tuple(out)


def _marginal(erf: np.ndarray, axis: int) -> np.ndarray:
    other = tuple(a for a in range(erf.ndim) if a != axis)
    return erf.sum(axis=other) if other else erf


def gaussian_fit(erf: np.ndarray) -> GaussianFit | None:
    """Least-squares fit of an axis-aligned Gaussian (scipy's Levenberg-Marquardt), started from
    the map's moments."""
    total = float(erf.sum())
    if total <= 0 or not np.isfinite(total):
        return None
    scale = float(erf.max())
    data = erf / scale
    mu0 = centre_of_mass(erf)
    sd0 = tuple(max(s, 0.5) for s in marginal_std(erf))
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in erf.shape], indexing="ij")
    params = np.array([1.0, *mu0, *sd0])
    if erf.size < params.size:  # fewer pixels than parameters: no fit is defined (a 1x2 input)
        return None
    from scipy.optimize import least_squares  # imported here: only ERF metrics need it

    params = least_squares(lambda p: (_gauss(grids, p) - data).ravel(), params, method="lm").x
    d = erf.ndim
    model = _gauss(grids, params)
    ss_res = float(((model - data) ** 2).sum())
    ss_tot = float(((data - data.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return GaussianFit(tuple(float(m) for m in params[1:1 + d]),
                       tuple(abs(float(s)) for s in params[1 + d:]), float(params[0] * scale), r2)


def _gauss(grids: Sequence[np.ndarray], p: np.ndarray) -> np.ndarray:
    d = len(grids)
    expo = sum((g - p[1 + i]) ** 2 / (2.0 * p[1 + d + i] ** 2 + 1e-12) for i, g in enumerate(grids))
    return p[0] * np.exp(-expo)


def area_ratios(erf: np.ndarray, centre: Sequence[float],
                thresholds: Sequence[float] = AREA_THRESHOLDS) -> tuple[AreaRatio, ...]:
    """RepLKNet (Ding et al. 2022, sec. 5.2): smallest square of side 2i+1 centred on the centre
    pixel whose sum exceeds t of the total; ratio = the square's area inside the map / map area
    (None if none suffices).  RepLKNet centres on the map's centre, where the square always fits
    and the ratio is side^d / area; an off-centre unit's square is clipped by the border, and a
    ratio above 1 would claim more than the whole map.

    RepLKNet's script applies log10(1 + x) and rescales first; pass such a map to reproduce it.
    """
    total = float(erf.sum())
    c = [min(max(round(v), 0), n - 1) for v, n in zip(centre, erf.shape)]
    max_i = max(max(ci, n - 1 - ci) for ci, n in zip(c, erf.shape))
    sums, areas = [], []
    for i in range(max_i + 1):
        window = tuple(slice(max(ci - i, 0), ci + i + 1) for ci in c)
        part = erf[window]
        sums.append(float(part.sum()))
        areas.append(part.size)
    out = []
    for t in thresholds:
        hit = next((i for i, s in enumerate(sums) if total > 0 and s / total > t), None)
        if hit is None:
            out.append(AreaRatio(t, None, None))
        else:
            out.append(AreaRatio(t, 2 * hit + 1, float(areas[hit] / erf.size)))
    return tuple(out)


def compute_metrics(erf: np.ndarray, centre: Sequence[float] | None = None,
                    trf_size: Sequence[int] | None = None) -> ERFMetrics:
    """Every metric of ``erf`` (1-D or 2-D, absolute values are used); ``trf_size`` (per axis, from
    the TRF pass) adds ERF/TRF = Luo size / (prod r)^(1/n) over n axes (and per axis: extent / r)."""
    erf = np.abs(np.asarray(erf, dtype=np.float64))
    if centre is None:
        centre = tuple((n - 1) / 2 for n in erf.shape)
    cv = centre_value(erf, centre)
    count, size = luo_erf_size(erf, cv)
    extent = erf_extent(erf, cv)
    ratio = per_axis = None
    if trf_size is not None:
        ratio = size / float(math.prod(trf_size)) ** (1.0 / len(trf_size))
        per_axis = tuple(e / r for e, r in zip(extent, trf_size))
    return ERFMetrics(
        shape=tuple(erf.shape), centre=tuple(float(c) for c in centre), centre_value=cv,
        luo_count=count, erf_size=size, erf_extent=extent, gaussian=gaussian_fit(erf),
        area_ratios=area_ratios(erf, centre), centre_of_mass=centre_of_mass(erf),
        marginal_std=marginal_std(erf), trf_size=tuple(trf_size) if trf_size else None,
        erf_trf_ratio=ratio, per_axis_erf_trf=per_axis)


def _fmt(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):  # undefined (an empty map)
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, tuple):
        return " x ".join(_fmt(x) for x in v)
    return str(v)


POOR_FIT_R2 = 0.5  # below it the Gaussian fit's sigma and radius mean little: the table leaves them out


def metric_rows(m: ERFMetrics) -> list[tuple[str, str, str]]:
    """(name, value, definition) for every metric, in a fixed order."""
    rows = [
        ("erf_size", _fmt(m.erf_size),
         "Luo 2016: sqrt(#pixels > (1-0.9545) x centre value); 1-D: the count; 3-D: its cube root"),
        ("erf_extent", _fmt(m.erf_extent), "per axis, extent of those pixels"),
        ("centre_value", _fmt(m.centre_value), "ERF value at the unit's TRF centre"),
        ("centre_of_mass", _fmt(m.centre_of_mass), "per axis, sum(p v) / sum(v)"),
        ("marginal_std", _fmt(m.marginal_std), "per axis, std of the marginal (Luo eq. 11)"),
    ]
    g = m.gaussian
    fits = g is not None and not g.r2 < POOR_FIT_R2  # a fit explaining little is no measure
    poor = "" if fits or g is None else f" (left out: R^2 below {POOR_FIT_R2})"
    rows += [
        ("gaussian_radius", _fmt(g.radius if g and fits else None),
         "1-sigma radius of the Gaussian fit (geometric mean of sigmas)" + poor),
        ("gaussian_sigma", _fmt(g.sigma if g and fits else None), "per axis sigma of the fit" + poor),
        ("gaussian_r2", _fmt(g.r2 if g else None), "goodness of fit (R^2)"),
    ]
    for a in m.area_ratios:
        what = f"RepLKNet: centred square holding >{a.t} of the total / map area"
        rows.append((f"area_ratio@{a.t}", _fmt(a.ratio), f"{what} (side {_fmt(a.side)})"))
    rows += [
        ("trf_size", _fmt(m.trf_size), "theoretical RF size r per axis (TRF pass)"),
        ("erf_trf_ratio", _fmt(m.erf_trf_ratio), "erf_size / (prod r)^(1/n), n axes"),
        ("erf_trf_per_axis", _fmt(m.per_axis_erf_trf), "per axis, erf_extent / r"),
    ]
    return rows


def metrics_dict(m: ERFMetrics) -> dict[str, object]:
    """A dict of the metrics for JSON (undefined values stay NaN here; report.json_text, the one
    JSON writer, makes them null)."""
    g = m.gaussian
    return {
        "shape": list(m.shape), "centre": list(m.centre), "centre_value": m.centre_value,
        "luo_count": m.luo_count, "erf_size": m.erf_size, "erf_extent": list(m.erf_extent),
        "gaussian": None if g is None else {"mu": list(g.mu), "sigma": list(g.sigma),
                                            "radius": g.radius, "r2": g.r2,
                                            "amplitude": g.amplitude},
        "area_ratios": [{"t": a.t, "side": a.side, "ratio": a.ratio} for a in m.area_ratios],
        "centre_of_mass": list(m.centre_of_mass), "marginal_std": list(m.marginal_std),
        "trf_size": None if m.trf_size is None else list(m.trf_size),
        "erf_trf_ratio": m.erf_trf_ratio,
        "erf_trf_per_axis": None if m.per_axis_erf_trf is None else list(m.per_axis_erf_trf),
    }
