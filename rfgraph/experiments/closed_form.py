"""Closed forms of Luo et al. sec. 2.1-2.3 for n stacked kxk convolutions with uniform (all-ones)
kernels and no nonlinearity: the exact ERF and its standard deviation."""

from __future__ import annotations

import math

import numpy as np


def uniform_erf_1d(n: int, k: int) -> list[int]:
    """Sec. 2.1, eq. 3-5: the coefficients of (1 + z + ... + z^(k-1))^n, exactly (Python ints).

    Length n(k-1)+1 = the TRF; k=2 gives the binomial coefficients C(n, t).
    """
    if n < 0 or k < 1:
        raise ValueError("n >= 0 and k >= 1 are required")
    coeffs = [1]
    for _ in range(n):
        out = [0] * (len(coeffs) + k - 1)
        for i, c in enumerate(coeffs):
            for m in range(k):
                out[i + m] += c
        coeffs = out
    return coeffs


def uniform_erf_2d(n: int, k: int) -> np.ndarray:
    """Sec. 2.1: the 2-D ERF of a kxk all-ones stack is the outer product of the 1-D coefficients
    (float64; exact while the values stay below 2^53)."""
    c = np.array([float(v) for v in uniform_erf_1d(n, k)])
    return np.outer(c, c)


def uniform_std(n: int, k: int) -> float:
    """Eq. 11: the standard deviation of the uniform ERF, sqrt(n (k^2 - 1) / 12)."""
    return math.sqrt(n * (k * k - 1) / 12.0)


def embed(kernel: np.ndarray, shape: tuple[int, ...], centre: tuple[float, ...]) -> np.ndarray:
    """Place ``kernel`` (odd sides) in a zero map of ``shape`` centred on the integer ``centre``."""
    out = np.zeros(shape, dtype=np.float64)
    src, dst = [], []
    for c, kn, n in zip(centre, kernel.shape, shape):
        lo = int(round(c)) - (kn - 1) // 2
        a, b = max(lo, 0), min(lo + kn, n)
        dst.append(slice(a, b))
        src.append(slice(a - lo, b - lo))
    out[tuple(dst)] = kernel[tuple(src)]
    return out


def max_relative_error(measured: np.ndarray, exact: np.ndarray) -> float:
    """max |measured - exact| / max |exact| (0 = identical)."""
    scale = float(np.abs(exact).max()) or 1.0
    return float(np.abs(measured - exact).max() / scale)
