"""Finite-difference ERF engine: central differences of ``seed . y`` with respect to each input
element inside the theoretical RF of the chosen unit (elements outside it cannot matter).

Works for any op onnxruntime can run (the fallback when an op has no VJP rule) and is the oracle
of the VJP tests.  Perturbations are batched: one run evaluates ``batch`` perturbed inputs.
Conventions: step ``h`` defaults to 1e-2 in float32 and 1e-6 in float64, near eps^(1/3) of each
type for inputs of unit scale, where the O(h^2) truncation and the eps/h round-off of central
differences balance (measured in float32 against the exact gradient: 1e-2 beat 1e-3 by 3-10x on
tanh stacks, a ViT and silero-vad); exact on piecewise-linear ops unless a kink lies within h;
sums are taken in float64.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from . import runtime
from .onnx_import import copy_model, prepare, static_shapes_and_types

DEFAULT_STEP = {np.dtype(np.float32): 1e-2, np.dtype(np.float64): 1e-6}


def expose(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """A copy of ``model`` whose only graph output is tensor ``name`` (any intermediate tensor)."""
    shapes, dtypes = static_shapes_and_types(model)  # the model preparation's inference
    out = copy_model(model)
    del out.graph.output[:]
    out.graph.output.append(helper.make_tensor_value_info(name, dtypes.get(name) or onnx.TensorProto.FLOAT,
                                                          shapes.get(name)))
    return out


def _forward_session(model: onnx.ModelProto, input_shape: Sequence[int],
                     input_name: str) -> object:
    return runtime.session(prepare(model, input_shape, input_name))


@dataclass
class FiniteDifference:
    """Central-difference input gradient of ``seed . y`` for a model exposing ``output``."""

    model: onnx.ModelProto
    output: str
    input_name: str
    input_shape: tuple[int, ...]  # batch 1
    spatial_axes: tuple[int, ...]
    region: tuple[tuple[int, int], ...] | None = None  # TRF region per spatial axis (unclipped)
    step: float | None = None
    batch: int = 16

    def __post_init__(self) -> None:
        self.model = expose(self.model, self.output)
        self.dtype = np.dtype(helper.tensor_dtype_to_np_dtype(next(
            i.type.tensor_type.elem_type for i in self.model.graph.input
            if i.name == self.input_name)))
        self.h = self.step or DEFAULT_STEP.get(self.dtype, 1e-2)
        self.single = _forward_session(self.model, self.input_shape, self.input_name)
        self.multi, self.k = self._batched_session()

    def _batched_session(self) -> tuple[object, int]:
        """A session taking ``batch`` inputs per run, checked against the batch-1 session."""
        if self.batch <= 1:
            return self.single, 1
        shape = (self.batch,) + tuple(self.input_shape[1:])
        try:
            sess = _forward_session(self.model, shape, self.input_name)
            probe = np.random.default_rng(0).standard_normal(shape).astype(self.dtype)
            multi = sess.run(None, {self.input_name: probe})[0]  # type: ignore[attr-defined]
            one = self.single.run(None, {self.input_name: probe[-1:]})[0]  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a batch-fixed model: fall back to one input per run
            return self.single, 1
        # samples must stack on the output's axis 0 (a time-major (T, N, C) output does not)
        stacked = one.shape[:1] == (1,) and multi.shape == (self.batch,) + one.shape[1:]
        if stacked and np.allclose(multi[-1:], one, rtol=1e-4, atol=1e-5):
            return sess, self.batch
        return self.single, 1

    def positions(self) -> list[tuple[int, ...]]:
        """Every input element index (batch 0) inside the clipped TRF region, all channels."""
        ranges = []
        for ax, n in enumerate(self.input_shape):
            if ax == 0:
                ranges.append(range(1))
            elif ax in self.spatial_axes and self.region is not None:
                u0, v0 = self.region[self.spatial_axes.index(ax)]
                ranges.append(range(max(u0, 0), min(v0, n - 1) + 1))
            else:
                ranges.append(range(n))
        return list(itertools.product(*ranges))

    def _objective(self, sess: object, xs: np.ndarray, seed: np.ndarray) -> np.ndarray:
        """``seed . y`` per input sample (one sample: the whole output, wherever its batch axis is;
        several: stacked on the output's axis 0, as ``_batched_session`` checked)."""
        y = sess.run(None, {self.input_name: xs})[0]  # type: ignore[attr-defined]
        prod = y.astype(np.float64) * seed.astype(np.float64)
        if len(xs) == 1:
            return np.array([prod.sum()])
        return prod.reshape(prod.shape[0], -1).sum(axis=1)

    def forwards(self) -> int:
        """Forward passes (model evaluations) one gradient takes: +h and -h per input element
        inside the TRF (``positions``), without enumerating them."""
        count = 1
        for ax, n in enumerate(self.input_shape):
            if ax in self.spatial_axes and self.region is not None:
                u0, v0 = self.region[self.spatial_axes.index(ax)]
                count *= max(min(v0, n - 1) - max(u0, 0) + 1, 0)
            elif ax > 0:
                count *= n
        return 2 * count

    def seconds_per_forward(self, repeats: int = 3) -> float:
        """Measured time of one forward pass (the best of ``repeats`` batched runs, per input)."""
        import time

        x = np.zeros((self.k,) + tuple(self.input_shape[1:]), dtype=self.dtype)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            self.multi.run(None, {self.input_name: x})  # type: ignore[attr-defined]
            best = min(best, time.perf_counter() - t0)
        return best / self.k

    def gradient(self, x: np.ndarray, seed: np.ndarray,
                 on_forwards: Callable[[int], None] | None = None) -> np.ndarray:
        """d(seed . y)/dx at ``x`` (batch 1); zero outside the TRF region; ``on_forwards`` is told
        how many forward passes each batch of perturbations took (progress display)."""
        x = x.astype(self.dtype, copy=False)
        grad = np.zeros(x.shape, dtype=np.float64)
        pos = self.positions()
        for start in range(0, len(pos), max(self.k // 2, 1) if self.k > 1 else 1):
            chunk = pos[start:start + max(self.k // 2, 1)]
            grad = self._fill(grad, x, seed, chunk)
            if on_forwards is not None:
                on_forwards(2 * len(chunk))
        return grad

    def _fill(self, grad: np.ndarray, x: np.ndarray, seed: np.ndarray,
              chunk: list[tuple[int, ...]]) -> np.ndarray:
        """Evaluate +h and -h for each position of ``chunk`` in one or two runs."""
        plus = np.repeat(x, len(chunk), axis=0)
        minus = plus.copy()
        for i, p in enumerate(chunk):
            plus[(i,) + p[1:]] += self.h
            minus[(i,) + p[1:]] -= self.h
        both = np.concatenate([plus, minus])
        if self.k == 1:
            vals = np.array([self._objective(self.single, both[i:i + 1], seed)[0]
                             for i in range(len(both))])
        else:
            pad = self.k - len(both)
            feed = np.concatenate([both, np.repeat(x, pad, axis=0)]) if pad > 0 else both
            vals = self._objective(self.multi, feed, seed)[:len(both)]
        # the difference of the two perturbed inputs, measured: exact step after rounding
        n = len(chunk)
        for i, p in enumerate(chunk):
            idx = (0,) + p[1:]
            step = float(plus[(i,) + p[1:]]) - float(minus[(i,) + p[1:]])
            grad[idx] = (vals[i] - vals[n + i]) / step
        return grad
