"""Recurrent ops (LSTM, GRU, RNN) rewritten as their unrolled step equations in primitive ONNX ops.

Why: the gradient graph back-propagates op by op (``semantics.VJP_RULES``); a recurrence is one ONNX
node whose gates and cell states never appear as tensors, so it has no rule of its own.  Written
out step by step (Slice, MatMul, Add, Split, Sigmoid, Tanh, Mul, Concat), it is the same function
(the equations of the ONNX spec, default activations) and every piece already back-propagates.
Batch-agnostic: no shape is baked in except the sequence length, which shape inference fixes.
Refused (with the finite-difference engine as the way out): other activations, ``clip``,
``input_forget``, ``sequence_lens``, weights computed at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import UnsupportedOpError
from .onnx_import import copy_model

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}


@dataclass
class _Emitter:
    """Collects the nodes and initializers replacing one recurrent node, with unique names."""

    prefix: str
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    count: int = 0

    def op(self, op: str, *inputs: str, **attrs: Any) -> str:
        self.count += 1
        out = f"{self.prefix}/{op}_{self.count}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, value: np.ndarray) -> str:
        self.count += 1
        name = f"{self.prefix}/const_{self.count}"
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64))


def unroll_recurrences(model: onnx.ModelProto, seq_lengths: dict[str, int], active: set[str],
                       value_of: Callable[[str], np.ndarray | None]) -> onnx.ModelProto:
    """A copy of ``model`` whose recurrent nodes on the input's path (an output in ``active``)
    are unrolled; ``seq_lengths`` gives each such node's sequence length (by node output 0),
    ``value_of`` the value of a tensor that does not depend on the input (weights, or None)."""
    out = copy_model(model)
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.op_type not in RECURRENT_OPS or node.domain not in ("", "ai.onnx") or \
                not any(o in active for o in node.output):
            nodes.append(node)
            continue
        em = _Emitter(f"rfgraph_unroll/{node.name or node.output[0]}")
        _unroll(em, node, value_of, seq_lengths[node.output[0]])
        nodes.extend(em.nodes)
        out.graph.initializer.extend(em.inits)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _unroll(em: _Emitter, node: onnx.NodeProto, value_of: Callable[[str], np.ndarray | None], steps: int) -> None:
    """Emit the unrolled equations of one RNN/GRU/LSTM node, writing its outputs' names."""
    op, name = node.op_type, node.name or node.output[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    _refuse_unsupported(op, name, attrs, node)
    if steps < 1:
        raise UnsupportedOpError(name, op, "an empty sequence")
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    batch_first = bool(attrs.get("layout", 0))
    weights = [_constant(node, value_of, i, name) for i in (1, 2)]
    hidden = int(weights[1].shape[-1])  # R: (directions, gates * hidden, hidden)
    bias = _constant(node, value_of, 3, name) if _has(node, 3) else None
    peep = _constant(node, value_of, 7, name) if op == "LSTM" and _has(node, 7) else None
    x = node.input[0]
    if batch_first:  # (B, T, I) -> (T, B, I)
        x = em.op("Transpose", x, perm=[1, 0, 2])
    dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    runs = []
    for d, way in enumerate(dirs):
        params = _Params(em, op, hidden, weights[0][d], weights[1][d],
                         None if bias is None else bias[d], None if peep is None else peep[d],
                         linear_before_reset=bool(attrs.get("linear_before_reset", 0)))
        h0 = _initial(em, node, 5, d, batch_first)
        c0 = _initial(em, node, 6, d, batch_first) if op == "LSTM" else None
        runs.append(_run_direction(em, params, x, h0, c0, steps, way))
    _write_outputs(em, node, runs, batch_first)


def _run_direction(em: _Emitter, p: _Params, x: str, h: str | None, c: str | None, steps: int,
                   way: str) -> tuple[str, str, str | None]:
    """One direction over the sequence x (T, B, I): Y (T, B, H) in time order, last H and C."""
    outs: dict[int, str] = {}
    for t in (range(steps) if way == "forward" else range(steps - 1, -1, -1)):
        xt = em.op("Squeeze", em.op("Slice", x, em.ints([t]), em.ints([t + 1]), em.ints([0])), em.ints([0]))
        h, c = STEPS[p.op](em, p, xt, h, c)
        outs[t] = h
    y = em.op("Concat", *[em.op("Unsqueeze", outs[t], em.ints([0])) for t in range(steps)], axis=0)
    return y, outs[steps - 1 if way == "forward" else 0], c


def _write_outputs(em: _Emitter, node: onnx.NodeProto, runs: list[tuple[str, str, str | None]],
                   batch_first: bool) -> None:
    """Y (T, D, B, H), Y_h and Y_c (D, B, H) from the directions' runs (batch first: (B, T, D, H),
    (B, D, H)), written under the node's own output names."""
    def stack(parts: list[str], axis: int) -> str:
        return em.op("Concat", *[em.op("Unsqueeze", t, em.ints([axis])) for t in parts], axis=axis)
    y = stack([y for y, _, _ in runs], 1)
    y_h = stack([h for _, h, _ in runs], 0)
    y_c = stack([c for _, _, c in runs if c is not None], 0) if node.op_type == "LSTM" else ""
    if batch_first:
        y, y_h = em.op("Transpose", y, perm=[2, 0, 1, 3]), em.op("Transpose", y_h, perm=[1, 0, 2])
        y_c = em.op("Transpose", y_c, perm=[1, 0, 2]) if y_c else ""
    for wanted, got in zip(node.output, (y, y_h, y_c)):
        if wanted:
            em.nodes.append(helper.make_node("Identity", [got], [wanted], name=f"{em.prefix}/{wanted}"))


def _refuse_unsupported(op: str, name: str, attrs: dict[str, object], node: onnx.NodeProto) -> None:
    """Variants the step equations below do not cover: refused, never approximated."""
    acts = attrs.get("activations")
    if acts is not None:
        names = [a.decode() if isinstance(a, bytes) else str(a) for a in acts]  # type: ignore[attr-defined]
        expected = DEFAULT_ACTIVATIONS[op] * (len(names) // len(DEFAULT_ACTIVATIONS[op]) or 1)
        if [n.lower() for n in names] != [n.lower() for n in expected]:
            raise UnsupportedOpError(name, op, f"activations {names} (only the defaults are unrolled)")
    for key in ("clip", "input_forget", "activation_alpha", "activation_beta"):
        if attrs.get(key):
            raise UnsupportedOpError(name, op, f"attribute '{key}' is not unrolled")
    if _has(node, 4):
        raise UnsupportedOpError(name, op, "sequence_lens is not unrolled")


def _has(node: onnx.NodeProto, slot: int) -> bool:
    return len(node.input) > slot and bool(node.input[slot])


def _constant(node: onnx.NodeProto, value_of: Callable[[str], np.ndarray | None], slot: int,
              name: str) -> np.ndarray:
    value = value_of(node.input[slot])
    if value is None:
        raise UnsupportedOpError(name, node.op_type, f"input {slot} ({node.input[slot]}) is no constant "
                                 f"(weights computed from the data are not unrolled)")
    return np.asarray(value)


def _initial(em: _Emitter, node: onnx.NodeProto, slot: int, d: int, batch_first: bool) -> str | None:
    """initial_h / initial_c of direction d as (B, H), or None (zeros)."""
    if not _has(node, slot):
        return None
    axis = 1 if batch_first else 0  # (B, D, H) or (D, B, H)
    picked = em.op("Slice", node.input[slot], em.ints([d]), em.ints([d + 1]), em.ints([axis]))
    return em.op("Squeeze", picked, em.ints([axis]))


@dataclass
class _Params:
    """One direction's weights as initializers: W^T (I, G*H), R^T (H, G*H), biases (G*H)."""

    em: _Emitter
    op: str
    hidden: int
    w: np.ndarray
    r: np.ndarray
    b: np.ndarray | None
    p: np.ndarray | None
    linear_before_reset: bool = False
    names: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        g, h = GATES[self.op], self.hidden
        self.names["wt"] = self.em.const(self.w.T)
        b = self.b if self.b is not None else np.zeros(2 * g * h, self.w.dtype)
        if self.op != "GRU":
            self.names["rt"] = self.em.const(self.r.T)
            self.names["b"] = self.em.const(b[: g * h] + b[g * h:])  # Wb + Rb: they add up here
        else:  # the hidden gate's recurrent part is applied after the reset gate
            rb = b[g * h:]
            self.names["wb"] = self.em.const(b[: g * h])
            self.names["rt_zr"], self.names["rt_h"] = self.em.const(self.r[: 2 * h].T), self.em.const(self.r[2 * h:].T)
            self.names["rb_zr"], self.names["rbh"] = self.em.const(rb[: 2 * h]), self.em.const(rb[2 * h:])
            self.names["rbz"], self.names["rbr"] = self.em.const(rb[:h]), self.em.const(rb[h: 2 * h])
            self.names["one"] = self.em.const(np.ones(1, self.w.dtype))
        if self.p is not None:
            for i, gate in enumerate("iof"):
                self.names[f"p{gate}"] = self.em.const(self.p[i * h:(i + 1) * h])

    def split(self, t: str, parts: int) -> list[str]:
        out = [f"{t}/part{i}" for i in range(parts)]
        self.em.nodes.append(helper.make_node("Split", [t, self.em.ints([self.hidden] * parts)], out,
                                              name=f"{t}/split", axis=1))
        return out


def _linear(em: _Emitter, x: str, weight_t: str, bias: str) -> str:
    return em.op("Add", em.op("MatMul", x, weight_t), bias)


def _lstm_step(em: _Emitter, p: _Params, xt: str, h: str | None, c: str | None) -> tuple[str, str | None]:
    """it, ft, ot = sigmoid(.), ct~ = tanh(.); C = ft C' + it ct~; H = ot tanh(C) (ONNX spec, iofc)."""
    z = _linear(em, xt, p.names["wt"], p.names["b"])
    if h is not None:
        z = em.op("Add", z, em.op("MatMul", h, p.names["rt"]))
    i, o, f, g = p.split(z, 4)
    if c is not None and "pi" in p.names:
        i, f = em.op("Add", i, em.op("Mul", c, p.names["pi"])), em.op("Add", f, em.op("Mul", c, p.names["pf"]))
    i, f, g = em.op("Sigmoid", i), em.op("Sigmoid", f), em.op("Tanh", g)
    new_c = em.op("Mul", i, g) if c is None else em.op("Add", em.op("Mul", f, c), em.op("Mul", i, g))
    if "po" in p.names:
        o = em.op("Add", o, em.op("Mul", new_c, p.names["po"]))
    return em.op("Mul", em.op("Sigmoid", o), em.op("Tanh", new_c)), new_c


def _gru_step(em: _Emitter, p: _Params, xt: str, h: str | None, c: str | None) -> tuple[str, None]:
    """zt, rt = sigmoid(.); ht~ = tanh(Xt Wh + (rt H') Rh + Rbh + Wbh), or with
    linear_before_reset tanh(Xt Wh + rt (H' Rh + Rbh) + Wbh); H = (1 - zt) ht~ + zt H'
    (ONNX spec, gates zrh; H' = 0 at the first step without initial_h)."""
    xz, xr, xh = p.split(_linear(em, xt, p.names["wt"], p.names["wb"]), 3)
    if h is None:
        hz, hr = p.names["rbz"], p.names["rbr"]
    else:
        hz, hr = p.split(_linear(em, h, p.names["rt_zr"], p.names["rb_zr"]), 2)
    z, r = em.op("Sigmoid", em.op("Add", xz, hz)), em.op("Sigmoid", em.op("Add", xr, hr))
    if h is None:
        recurrent = em.op("Mul", r, p.names["rbh"]) if p.linear_before_reset else p.names["rbh"]
    elif p.linear_before_reset:
        recurrent = em.op("Mul", r, _linear(em, h, p.names["rt_h"], p.names["rbh"]))
    else:
        recurrent = _linear(em, em.op("Mul", r, h), p.names["rt_h"], p.names["rbh"])
    n = em.op("Tanh", em.op("Add", xh, recurrent))
    keep = em.op("Mul", em.op("Sub", p.names["one"], z), n)
    return (keep if h is None else em.op("Add", keep, em.op("Mul", z, h))), None


def _rnn_step(em: _Emitter, p: _Params, xt: str, h: str | None, c: str | None) -> tuple[str, None]:
    """H = tanh(Xt W^T + H' R^T + Wb + Rb)."""
    z = _linear(em, xt, p.names["wt"], p.names["b"])
    if h is not None:
        z = em.op("Add", z, em.op("MatMul", h, p.names["rt"]))
    return em.op("Tanh", z), None


STEPS: dict[str, Callable[..., tuple[str, str | None]]] = {"LSTM": _lstm_step, "GRU": _gru_step, "RNN": _rnn_step}
