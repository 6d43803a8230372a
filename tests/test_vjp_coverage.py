"""Gradient (VJP) rules of the ops that had a receptive-field rule but no gradient rule (issue 13),
table-driven as JAX's lax_autodiff_test: one case list, each case an ONNX graph around one op.

Every case is checked twice, against independent oracles: torch autograd on the same math (where
torch has the op), and central differences of onnxruntime's own kernel (rfgraph's FD engine), in
float64 where onnxruntime runs the op in double, else float32 with a looser tolerance.  Ties at
a maximum follow torch (split evenly for Max/Min/ReduceMax/ReduceMin, the first maximum for
GlobalMaxPool); quantized paths are refused with the finite-difference way out; the coverage
test lists every differentiable op of the receptive-field table without a rule (``NOT_YET``); a
network using them, exported by both torch exporters (the dynamo one keeps Softplus, Mish, Elu,
Selu, Celu as single ops), matches autograd end to end.
Error measure: max|g - ref| / max|ref|.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from rfgraph import semantics, vjp
from rfgraph.errors import UnsupportedOpError
from rfgraph.finite_diff import FiniteDifference
from rfgraph.semantics.elementwise import DERIVATIVES
from rfgraph.semantics.reductions import REDUCTION_DERIVATIVES

Sampler = Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]
TorchFn = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


def normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape)


def uniform(lo: float, hi: float) -> Sampler:
    return lambda rng, shape: rng.uniform(lo, hi, shape)


def away_from(*kinks: float, gap: float = 0.05) -> Sampler:
    """Normal samples moved at least ``gap`` away from each kink (float32 differences use h=1e-2)."""
    def sample(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        x = rng.standard_normal(shape) * 1.5
        for k in kinks:
            near = np.abs(x - k) < gap
            x[near] = k + np.where(x[near] >= k, gap, -gap) * 2
        return x
    return sample


@dataclass(frozen=True)
class Case:
    """One op applied to ``x`` (after the ``pre`` nodes), its torch twin, and its input domain."""

    op: str
    torch_fn: TorchFn | None
    attrs: dict = field(default_factory=dict)
    inputs: tuple[str, ...] = ("x",)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    pre: tuple[onnx.NodeProto, ...] = ()
    shape: tuple[int, ...] = (1, 3, 4, 5)
    sample: Sampler = normal
    opset: int = 20
    name: str = ""
    double: bool = True  # False: onnxruntime's double kernel is not float64 inside (see the case)

    @property
    def id(self) -> str:
        return self.name or self.op


def node(op: str, inputs: list[str], output: str, **attrs: object) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], **attrs)


def reduce_case(op: str, fn: Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor], opset: int = 18,
                sample: Sampler = normal, name: str = "") -> Case:
    """A reduction over axes (1, 3) keeping dims, the axes an input (opset 18) or an attribute."""
    if opset >= 18:
        return Case(op, lambda x, c: fn(x, (1, 3)), {"keepdims": 1}, ("x", "axes"),
                    {"axes": np.array([1, 3], np.int64)}, sample=sample, opset=opset, name=name)
    return Case(op, lambda x, c: fn(x, (1, 3)), {"keepdims": 1, "axes": [1, 3]}, sample=sample,
                opset=opset, name=name or f"{op}-opset{opset}")


def group_norm(x: torch.Tensor, c: dict[str, torch.Tensor], per_group: bool) -> torch.Tensor:
    scale, bias = c["s"], c["bias"]
    if per_group:  # opset 18: one scale per group, repeated over its channels
        scale, bias = scale.repeat_interleave(2), bias.repeat_interleave(2)
    return F.group_norm(x, 2, scale, bias, eps=1e-5)


def lp_pool(x: torch.Tensor, p: int) -> torch.Tensor:
    """ONNX LpPool (kernel 2x3, stride 1x2, pads 1): (window sum of |x|^p, zeros outside)^(1/p)."""
    return (F.avg_pool2d(x.abs() ** p, (2, 3), (1, 2), 1, count_include_pad=True) * 6) ** (1 / p)


RNG = np.random.default_rng(0)
W = RNG.standard_normal((1, 3, 4, 5))
SCALE, BIAS = RNG.standard_normal(4) + 1.5, RNG.standard_normal(4)
GRID = RNG.uniform(-1.3, 1.3, (1, 3, 6, 2))

SCATTER_IDX = np.argsort(RNG.standard_normal((1, 3, 4, 5)), axis=3)[..., :2].astype(np.int64)  # 2 places a row


def scatter_nd(x: torch.Tensor) -> torch.Tensor:
    """ScatterND of x's channels 0, 1 into channels 1, 2 of 2x."""
    y = 2 * x
    return torch.cat([y[:, :1], x[:, :2], y[:, 3:]], dim=1)


CASES: list[Case] = [
    # unary elementwise math (DERIVATIVES)
    Case("Abs", lambda x, c: x.abs(), sample=away_from(0.0)),
    Case("Log", lambda x, c: x.log(), sample=uniform(0.3, 3.0)),
    Case("Reciprocal", lambda x, c: x.reciprocal(), sample=uniform(0.5, 2.0)),
    Case("Sin", lambda x, c: x.sin()),
    Case("Cos", lambda x, c: x.cos()),
    Case("Tan", lambda x, c: x.tan(), sample=uniform(-1.2, 1.2)),
    Case("Asin", lambda x, c: x.asin(), sample=uniform(-0.9, 0.9)),
    Case("Acos", lambda x, c: x.acos(), sample=uniform(-0.9, 0.9)),
    Case("Atan", lambda x, c: x.atan()),
    Case("Sinh", lambda x, c: x.sinh()),
    Case("Cosh", lambda x, c: x.cosh()),
    Case("Asinh", lambda x, c: x.asinh()),
    Case("Acosh", lambda x, c: x.acosh(), sample=uniform(1.1, 3.0)),
    Case("Atanh", lambda x, c: x.atanh(), sample=uniform(-0.9, 0.9)),
    Case("Softplus", lambda x, c: F.softplus(x)),
    Case("Softsign", lambda x, c: F.softsign(x), sample=away_from(0.0)),
    Case("Mish", lambda x, c: F.mish(x)),
    Case("Swish", lambda x, c: x * torch.sigmoid(0.7 * x), {"alpha": 0.7}, opset=24),
    Case("Elu", lambda x, c: F.elu(x, 0.6), {"alpha": 0.6}, sample=away_from(0.0)),
    Case("Selu", lambda x, c: F.selu(x), sample=away_from(0.0)),
    Case("Celu", lambda x, c: F.celu(x, 1.7), {"alpha": 1.7}, sample=away_from(0.0)),
    Case("ThresholdedRelu", lambda x, c: F.threshold(x, 0.4, 0.0), {"alpha": 0.4}, sample=away_from(0.4)),
    # onnxruntime's double Shrink rounds through float32 (1 + 1e-9 comes out as 1): float32 differences
    Case("Shrink", lambda x, c: F.hardshrink(x, 0.6), {"lambd": 0.6}, sample=away_from(-0.6, 0.6),
         name="Shrink-hard", double=False),
    Case("Shrink", lambda x, c: F.softshrink(x, 0.6), {"lambd": 0.6, "bias": 0.6},
         sample=away_from(-0.6, 0.6), name="Shrink-soft", double=False),
    # broadcasting and variadic
    Case("Max", lambda x, c: torch.maximum(torch.maximum(x, c["w"]), 0.5 * x), inputs=("x", "w", "h"),
         consts={"w": W, "half": np.array(0.5)}, pre=(node("Mul", ["x", "half"], "h"),)),
    Case("Min", lambda x, c: torch.minimum(x, c["row"]), inputs=("x", "row"),
         consts={"row": RNG.standard_normal((1, 1, 1, 5))}),
    Case("Max", lambda x, c: x, name="Max-single"),
    Case("Mod", lambda x, c: torch.fmod(c["w4"], x.abs() + 0.5), {"fmod": 1}, ("w4", "d"),
         {"w4": W * 4, "half": np.array(0.5)},
         (node("Abs", ["x"], "a"), node("Add", ["a", "half"], "d")), sample=away_from(0.0),
         name="Mod-divisor"),
    Case("Mod", lambda x, c: torch.fmod(x * 3, c["three"]), {"fmod": 1}, ("x3", "three"),
         {"three": np.array(1.3)}, (node("Add", ["x", "x"], "x2"), node("Add", ["x2", "x"], "x3")),
         name="Mod-dividend"),
    Case("CastLike", lambda x, c: x, inputs=("x", "x")),
    # reductions
    reduce_case("ReduceMax", lambda x, d: x.amax(d, keepdim=True)),
    reduce_case("ReduceMin", lambda x, d: x.amin(d, keepdim=True), opset=17),
    reduce_case("ReduceL1", lambda x, d: x.abs().sum(d, keepdim=True), sample=away_from(0.0)),
    reduce_case("ReduceL2", lambda x, d: torch.linalg.vector_norm(x, 2, d, keepdim=True)),
    reduce_case("ReduceSumSquare", lambda x, d: (x * x).sum(d, keepdim=True)),
    reduce_case("ReduceLogSumExp", lambda x, d: torch.logsumexp(x, d, keepdim=True)),
    reduce_case("ReduceLogSum", lambda x, d: x.sum(d, keepdim=True).log(), sample=uniform(0.2, 2.0)),
    reduce_case("ReduceProd", lambda x, d: x.prod(3, keepdim=True).prod(1, keepdim=True),
                sample=uniform(0.5, 1.5)),
    reduce_case("ReduceProd", lambda x, d: x.prod(3, keepdim=True).prod(1, keepdim=True), opset=17,
                sample=uniform(-1.5, 1.5)),
    # pooling
    Case("GlobalMaxPool", lambda x, c: F.adaptive_max_pool2d(x, 1)),
    Case("GlobalLpPool", lambda x, c: (x.abs() ** 3).sum((2, 3), keepdim=True) ** (1 / 3), {"p": 3},
         sample=away_from(0.0)),
    Case("GlobalLpPool", lambda x, c: torch.linalg.vector_norm(x, 2, (2, 3), keepdim=True), name="GlobalLpPool-2"),
    Case("LpPool", lambda x, c: lp_pool(x, 2),
         {"p": 2, "kernel_shape": [2, 3], "strides": [1, 2], "pads": [1, 1, 1, 1]}, shape=(1, 2, 6, 7)),
    Case("LpPool", lambda x, c: lp_pool(x, 3),
         {"p": 3, "kernel_shape": [2, 3], "strides": [1, 2], "pads": [1, 1, 1, 1]}, shape=(1, 2, 6, 7),
         sample=away_from(0.0), name="LpPool-3"),
    # sampling at a constant grid (partly outside [-1, 1]), every mode and padding with a rule
    *[Case("GridSample", lambda x, c, m=m, p=p, a=a: F.grid_sample(x, c["grid"], m, p, bool(a)),
           {"mode": m if m == "nearest" or opset == 16 else "linear", "padding_mode": p, "align_corners": a},
           ("x", "grid"), {"grid": GRID}, opset=opset, name=f"GridSample-{m}-{p}-{a}-opset{opset}")
      for m, p, a, opset in (("bilinear", "zeros", 0, 16), ("bilinear", "border", 1, 20),
                             ("bilinear", "zeros", 1, 20), ("nearest", "zeros", 0, 20),
                             ("nearest", "border", 1, 16))],
    # normalisation
    Case("InstanceNormalization", lambda x, c: F.instance_norm(x, weight=c["s"], bias=c["bias"], eps=1e-3),
         {"epsilon": 1e-3}, ("x", "s", "bias"), {"s": SCALE, "bias": BIAS}, shape=(1, 4, 3, 5)),
    # opset 21 computes the statistics in stash_type, float32 by default, even for double inputs
    Case("GroupNormalization", lambda x, c: group_norm(x, c, False), {"num_groups": 2},
         ("x", "s", "bias"), {"s": SCALE, "bias": BIAS}, shape=(1, 4, 3, 5), opset=21, double=False),
    Case("GroupNormalization", lambda x, c: group_norm(x, c, True), {"num_groups": 2},
         ("x", "s", "bias"), {"s": SCALE[:2], "bias": BIAS[:2]}, shape=(1, 4, 3, 5), opset=18,
         name="GroupNormalization-opset18"),
    Case("MeanVarianceNormalization",
         lambda x, c: (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), unbiased=False, keepdim=True),
         shape=(1, 3, 4, 5)),
    Case("MeanVarianceNormalization",
         lambda x, c: (x - x.mean((1, 3), keepdim=True)) / x.std((1, 3), unbiased=False, keepdim=True),
         {"axes": [1, -1]}, name="MeanVarianceNormalization-axes"),
    Case("LpNormalization", lambda x, c: F.normalize(x, 2.0, 1), {"axis": 1, "p": 2}),
    Case("LpNormalization", lambda x, c: F.normalize(x, 1.0, -1), {"axis": -1, "p": 1},
         sample=away_from(0.0), name="LpNormalization-1"),
    # scatters (MViTv2 adds relative positions to its scores so): data 2x, rows 1 and 2 of channel
    # axis overwritten by x's channels 0 and 1; the same along the last axis, element by element
    Case("ScatterND", lambda x, c: scatter_nd(x), inputs=("x2", "idx", "upd"),
         consts={"idx": np.array([[0, 1], [0, 2]], np.int64), "two": np.array(2.0),
                 "s0": np.array([0], np.int64), "s2": np.array([2], np.int64), "ax": np.array([1], np.int64),
                 "shp": np.array([2, 4, 5], np.int64)},
         pre=(node("Mul", ["x", "two"], "x2"), node("Slice", ["x", "s0", "s2", "ax"], "xs"),
              node("Reshape", ["xs", "shp"], "upd"))),
    Case("ScatterElements", lambda x, c: x.scatter(3, torch.tensor(SCATTER_IDX), 3 * x[..., :2]), {"axis": 3},
         ("x", "idx", "upd"), {"idx": SCATTER_IDX, "three": np.array(3.0), "s0": np.array([0], np.int64),
                               "s2": np.array([2], np.int64), "ax": np.array([3], np.int64)},
         (node("Slice", ["x", "s0", "s2", "ax"], "xs"), node("Mul", ["xs", "three"], "upd"))),
]


def model_of(case: Case, dtype: int) -> onnx.ModelProto:
    """The case's graph with float tensors of ``dtype``."""
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    inits = [numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np_dtype), k)
             for k, v in case.consts.items()]
    nodes = list(case.pre) + [node(case.op, list(case.inputs), "y", **case.attrs)]
    graph = helper.make_graph(nodes, case.id, [helper.make_tensor_value_info("x", dtype, list(case.shape))],
                              [helper.make_tensor_value_info("y", dtype, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])


def vjp_of(model: onnx.ModelProto, x: np.ndarray, seed: np.ndarray) -> np.ndarray:
    graph = vjp.build_vjp(model)
    return vjp.input_gradient(graph, vjp.session(graph), x, seed)


def rel_err(g: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(g - ref).max() / np.abs(ref).max())


def inputs_of(case: Case, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The case's input and a random seed tensor of the output's shape (measured by onnxruntime)."""
    rng = np.random.default_rng(seed)
    x = case.sample(rng, case.shape)
    double = runs_in_double(case)
    model = model_of(case, TensorProto.DOUBLE if double else TensorProto.FLOAT)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x.astype(np.float64 if double else np.float32)})[0]
    return x, rng.standard_normal(y.shape)


def runs_in_double(case: Case) -> bool:
    """Whether onnxruntime has a float64 kernel for every node of the case (and it computes in it)."""
    if not case.double:
        return False
    try:
        ort.InferenceSession(model_of(case, TensorProto.DOUBLE).SerializeToString(),
                             providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - no double kernel: NOT_IMPLEMENTED at load
        return False
    return True


@pytest.mark.parametrize("case", [c for c in CASES if c.torch_fn is not None], ids=lambda c: c.id)
def test_rule_matches_torch_autograd(case: Case) -> None:
    """float32 gradient graph vs torch autograd on the same math (torch in float64)."""
    x, seed = inputs_of(case)
    xt = torch.tensor(x, requires_grad=True)
    consts = {k: torch.tensor(v) for k, v in case.consts.items()}
    assert case.torch_fn is not None
    (case.torch_fn(xt, consts) * torch.tensor(seed)).sum().backward()
    got = vjp_of(model_of(case, TensorProto.FLOAT), x.astype(np.float32), seed.astype(np.float32))
    assert rel_err(got, xt.grad.numpy()) < 1e-4


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_rule_matches_central_differences_of_onnxruntime(case: Case) -> None:
    """The gradient graph vs central differences of onnxruntime's own kernel: float64 (step 1e-6,
    tolerance 1e-6) where onnxruntime has a double kernel, else float32 (step 1e-2, 2e-3)."""
    double = runs_in_double(case)
    dtype, tol = (TensorProto.DOUBLE, 1e-6) if double else (TensorProto.FLOAT, 2e-3)
    model = model_of(case, dtype)
    x, seed = inputs_of(case)
    np_dtype = np.float64 if double else np.float32
    fd = FiniteDifference(model, "y", "x", case.shape, tuple(range(2, len(case.shape))), None, None, 8)
    ref = fd.gradient(x.astype(np_dtype), seed)
    assert rel_err(vjp_of(model, x.astype(np_dtype), seed.astype(np_dtype)), ref) < tol


# ------------------------------------------------------------------------------------ ties

TIED = np.array([[[[1.0, 3.0, 3.0], [0.0, 3.0, -1.0]], [[2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]]])  # (1, 2, 2, 3)


@pytest.mark.parametrize("op,fn", [
    ("ReduceMax", lambda x: x.amax((2, 3), keepdim=True)),
    ("ReduceMin", lambda x: x.amin((2, 3), keepdim=True)),
    ("GlobalMaxPool", lambda x: F.adaptive_max_pool2d(x, 1)),
])
def test_ties_follow_torch(op: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """At tied extremes: amax/amin split the gradient evenly (ReduceMax/Min), adaptive max
    pooling gives it to the first maximum (GlobalMaxPool, as MaxPool's indices)."""
    case = reduce_case(op, lambda x, d: x) if op != "GlobalMaxPool" else Case(op, None)
    model = model_of(Case(case.op, None, {k: v for k, v in case.attrs.items() if k != "axes"} | (
        {"axes": [2, 3]} if op != "GlobalMaxPool" else {}), shape=TIED.shape, opset=17), TensorProto.FLOAT)
    xt = torch.tensor(TIED, requires_grad=True)
    seed = torch.tensor([[[[1.5]], [[-2.0]]]], dtype=torch.float64)
    (fn(xt) * seed).sum().backward()
    got = vjp_of(model, TIED.astype(np.float32), seed.numpy().astype(np.float32))
    np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-6)


def test_elementwise_max_min_split_ties_like_torch_maximum() -> None:
    """Max(x, w) where x equals w: each operand gets half (torch.maximum); Min likewise."""
    w = np.array([[0.0, 1.0, -1.0, 2.0]])
    x = np.array([[0.0, 2.0, -1.0, 1.0]])
    for op, fn in (("Max", torch.maximum), ("Min", torch.minimum)):
        case = Case(op, None, inputs=("x", "w"), consts={"w": w}, shape=(1, 4))
        xt = torch.tensor(x, requires_grad=True)
        seed = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
        (fn(xt, torch.tensor(w)) * seed).sum().backward()
        got = vjp_of(model_of(case, TensorProto.DOUBLE), x, seed.numpy())
        np.testing.assert_allclose(got, xt.grad.numpy())


def test_reduce_prod_with_zeros_matches_torch() -> None:
    """ReduceProd at zeros: one zero gets the product of the others, two zeros give 0 everywhere."""
    x = np.array([[[[0.0, 2.0, 3.0], [0.0, 0.0, 5.0]]]])  # rows: one zero, two zeros
    case = Case("ReduceProd", None, {"keepdims": 0, "axes": [3]}, shape=x.shape, opset=17)
    xt = torch.tensor(x, requires_grad=True)
    seed = torch.tensor([[[1.5, -2.0]]], dtype=torch.float64)
    (xt.prod(3) * seed).sum().backward()
    np.testing.assert_allclose(vjp_of(model_of(case, TensorProto.DOUBLE), x, seed.numpy()), xt.grad.numpy())


# ---------------------------------------------------------------------- quantized paths

def qdq_model() -> onnx.ModelProto:
    """x -> QuantizeLinear -> Reshape (int8) -> DequantizeLinear -> Relu: a QDQ-format model."""
    nodes = [node("QuantizeLinear", ["x", "s", "z"], "q"), node("Reshape", ["q", "shape"], "r"),
             node("DequantizeLinear", ["r", "s", "z"], "d"), node("Relu", ["d"], "y")]
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(np.array([1, 3, 20], np.int64), "shape")]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def dynamic_model() -> onnx.ModelProto:
    """x -> DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(scale): dynamic quantization."""
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "qs", "qz"]),
             node("MatMulInteger", ["q", "w", "qz"], "i"), node("Cast", ["i"], "f", to=TensorProto.FLOAT),
             node("Mul", ["f", "qs"], "y")]
    inits = [numpy_helper.from_array(np.ones((5, 2), np.uint8), "w")]
    graph = helper.make_graph(nodes, "dq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


@pytest.mark.parametrize("model,op", [(qdq_model(), "DequantizeLinear"), (dynamic_model(), "MatMulInteger")])
def test_quantized_paths_are_refused_with_the_way_out(model: onnx.ModelProto, op: str) -> None:
    """The gradient of a quantizer is 0 almost everywhere (rounding): refused, naming the first
    quantized op reached and the float model as the way out (finite differences of rounding are 0
    or a jump too), never an empty ERF; onnxruntime runs the model (the refusal is no loading failure)."""
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(UnsupportedOpError) as info:
        vjp.build_vjp(model)
    msg = str(info.value)
    assert f"({op})" in msg and "step function" in msg and vjp.QUANTIZED_HINT in msg and vjp.FD_HINT not in msg


GRID_FROM_INPUT = (node("Mul", ["x", "x"], "t"), node("Slice", ["t", "zero", "two", "one"], "u"),
                   node("Transpose", ["u"], "grid", perm=[0, 2, 3, 1]))
GRID_CONSTS = {"zero": np.array([0]), "two": np.array([2]), "one": np.array([1])}


@pytest.mark.parametrize("attrs,why", [
    ({"mode": "cubic"}, "mode 'cubic'"),
    ({"padding_mode": "reflection"}, "padding 'reflection'"),
])
def test_grid_sample_without_a_rule_is_refused(attrs: dict, why: str) -> None:
    """Cubic and reflection: refused with the reason and the way out."""
    case = Case("GridSample", None, attrs, ("x", "grid"), {**GRID_CONSTS, "grid": GRID}, (), shape=(1, 2, 3, 6),
                opset=20)
    model = model_of(case, TensorProto.FLOAT)
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(UnsupportedOpError) as info:
        vjp.build_vjp(model)
    assert why in str(info.value) and vjp.FD_HINT in str(info.value)


def test_grid_sample_of_a_grid_computed_from_the_input_has_a_gradient() -> None:
    """An input-dependent grid (refused before): its gradient flows through the grid as well,
    equal to central differences of onnxruntime's kernel."""
    from tests.conformance.cases import Case as Conformance
    from tests.conformance.oracle import check_vjp

    case = Case("GridSample", None, {}, ("x", "grid"), GRID_CONSTS, GRID_FROM_INPUT, shape=(1, 2, 3, 6), opset=20)
    model = model_of(case, TensorProto.FLOAT)
    x = np.random.default_rng(4).uniform(-0.9, 0.9, (1, 2, 3, 6)).astype(np.float32)
    assert check_vjp(Conformance("grid_from_x_squared", "GridSample", model, "x", x)).verdict == "match"


# ------------------------------------------------------------------------------- coverage

# Ops of the receptive-field table without a gradient rule of their own, and why (the count is
# visible here; the coverage test fails when a rule is added or removed without updating it).
NOT_YET: dict[str, str] = {}  # none today (GridSample had no rule: it has one for linear and nearest)
ELSEWHERE = {  # differentiable, handled before the rules see them
    "RNN": "unrolled by rfgraph.unroll", "GRU": "unrolled by rfgraph.unroll", "LSTM": "unrolled by rfgraph.unroll",
    "Upsample": "exists at opset < 10 only; vjp.prepare converts the model to opset 17 (Resize)",
}
OUT_OF_SCOPE = {  # the receptive-field rule refuses them too, or onnxruntime cannot run them
    "If": "control flow", "Loop": "control flow", "Scan": "control flow",
    "Crop": "not in the ONNX operator set (experimental, removed); no runtime executes it",
}
# Step functions (rounding): gradient 0 almost everywhere; refused, as a zero ERF would mislead.
QUANTIZED = semantics.QUANTIZED_OPS | {"DequantizeLinear"}


def test_every_differentiable_op_of_the_trf_table_has_a_rule() -> None:
    """TRF table = rules + declared non-differentiable + NOT_YET + ELSEWHERE + OUT_OF_SCOPE, and
    at least 95% of the differentiable ops (quantizers are not: step functions) have a rule."""
    trf = set(semantics.TRF_RULES)
    without = trf - set(semantics.VJP_RULES) - semantics.NON_DIFFERENTIABLE
    assert without == set(NOT_YET) | set(ELSEWHERE) | set(OUT_OF_SCOPE)
    differentiable = trf - semantics.NON_DIFFERENTIABLE - set(OUT_OF_SCOPE) - (QUANTIZED & trf)
    covered = differentiable - set(NOT_YET)
    assert len(covered) / len(differentiable) >= 0.95, (len(covered), len(differentiable))
    assert QUANTIZED & trf <= set(semantics.VJP_RULES)


def test_every_new_rule_has_a_case() -> None:
    """Each op given a rule by this change is exercised by CASES (or a test above)."""
    tested = {c.op for c in CASES} | {"DequantizeLinear"} | semantics.QUANTIZED_OPS
    new = set(DERIVATIVES) | set(REDUCTION_DERIVATIVES) | {
        "Max", "Min", "Mod", "CastLike", "GlobalMaxPool", "GlobalLpPool", "LpPool", "GridSample",
        "InstanceNormalization", "GroupNormalization", "MeanVarianceNormalization", "LpNormalization",
        "ScatterND", "ScatterElements"}
    assert new <= tested, new - tested


def test_upsample_reaches_the_resize_rule() -> None:
    """An opset-9 Upsample (no rule of its own) is converted to Resize by prepare: nearest x2,
    so each input gradient is the sum of its 2x2 block of the seed."""
    up = node("Upsample", ["x", "scales"], "y", mode="nearest")
    graph = helper.make_graph([up], "up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    seed = np.random.default_rng(3).standard_normal((1, 2, 6, 6)).astype(np.float32)
    got = vjp_of(model, np.zeros((1, 2, 3, 3), np.float32), seed)
    np.testing.assert_allclose(got, seed.reshape(1, 2, 3, 2, 3, 2).sum(axis=(3, 5)), rtol=1e-6)


# ---------------------------------------------------------------------- exported networks

class Activations(torch.nn.Module):
    """The ops of this file as torch writes them: activations the dynamo exporter keeps as single
    ops (Softplus, Mish, Elu...), elementwise and reduced extremes, instance/group/Lp norms."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.c1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.inorm = torch.nn.InstanceNorm2d(4, affine=True)
        self.gnorm = torch.nn.GroupNorm(2, 4)
        self.c2 = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        y = F.softplus(y) + F.mish(y) - F.elu(y, 0.7) + F.selu(y) * F.celu(y, 1.3) + F.softsign(y)
        y = torch.maximum(self.inorm(y), self.gnorm(y).sin()) - torch.minimum(y.abs(), y.cos())
        y = self.c2(F.normalize(y, dim=1))
        return y * y.amax(dim=(2, 3), keepdim=True) + F.adaptive_max_pool2d(y, 1) + y.logsumexp(1, keepdim=True)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_exported_network_matches_autograd(dynamo: bool) -> None:
    """Both torch exporters: the gradient graph of the exported network equals torch autograd."""
    net = Activations().eval()
    x = torch.randn(1, 3, 9, 11)
    f = io.BytesIO()
    torch.onnx.export(net, (x,), f, dynamo=dynamo, input_names=["x"], output_names=["y"])
    model = onnx.load_from_string(f.getvalue())
    seed = torch.randn(1, 4, 9, 11)
    xg = x.clone().requires_grad_(True)
    (net(xg) * seed).sum().backward()
    assert rel_err(vjp_of(model, x.numpy(), seed.numpy()), xg.grad.numpy()) < 1e-4


def test_conv_bias_computed_from_the_input_gets_its_gradient() -> None:
    """tf2onnx folds a 1x1 map's residual into the next Conv's bias (Keras ResNetV2 at 32 px): the
    bias depends on the input, and its gradient (the output's, summed over positions) was dropped,
    so the analysis stopped there.  Oracle: torch autograd (float64), and the TRF: every unit reads
    the pixels the bias reads."""
    import rfgraph

    rng = np.random.default_rng(8)
    w1, w2 = rng.standard_normal((3, 2, 4, 4)), rng.standard_normal((3, 2, 3, 3))
    nodes = [node("Conv", ["x", "w1"], "a", kernel_shape=[4, 4]),
             node("Squeeze", ["a", "axes"], "b"),
             node("Conv", ["x", "w2", "b"], "y", kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(w1.astype(np.float32), "w1"), numpy_helper.from_array(w2.astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([0, 2, 3], np.int64), "axes")]
    graph = helper.make_graph(nodes, "bias", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((1, 2, 4, 4))
    seed = np.zeros((1, 3, 4, 4))
    seed[0, :, 0, 0] = 1.0
    xt = torch.tensor(x, requires_grad=True)
    bias = F.conv2d(xt, torch.tensor(w1)).reshape(3)
    (F.conv2d(xt, torch.tensor(w2), bias, padding=1) * torch.tensor(seed)).sum().backward()
    got = vjp_of(model, x.astype(np.float32), seed.astype(np.float32))
    assert rel_err(got, xt.grad.numpy()) < 1e-5
    a = rfgraph.analyze(model)
    assert not a.stops and a["y"].region((0, 0)) == ((-1, 3), (-1, 3))  # the 3x3 window and the bias's 4x4
