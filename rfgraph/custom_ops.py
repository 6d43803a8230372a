"""User-declared receptive-field rules for ops rfgraph does not know (custom domains, new ops).

A rule says what an op does to spatial positions, in one of five *kinds*:

* ``window``: a sliding window with ``kernel``, ``stride``, ``pad`` (begin padding) and
  ``dilation`` per spatial axis (tensor axes 2..), exactly like Conv (eqs. 5-6 of Araujo et al.);
* ``conv`` / ``pool``: read those numbers from ONNX Conv/Pool attributes (``kernel_shape``,
  ``strides``, ``pads``, ``dilations``, ``auto_pad``; ``conv`` takes the kernel from the weight at
  input 1 when ``kernel_shape`` is absent): for fused ops such as a ``com.example::ConvRelu``;
* ``pointwise``: output unit u reads input unit u (several data inputs broadcast like Add);
* ``global``: every output unit reads every input position (attention, global pooling).

Each number is an int, a list (one per spatial axis; for ``pad`` a 2n list is ONNX begins+ends),
``"attr:NAME"`` (read the node attribute NAME), or a callable over the node's attribute dict.
A whole rule may also be one callable ``rule(attrs) -> "pointwise" | "global" | dict(kind=...,
kernel=..., stride=..., pad=..., dilation=...)``.

Rules come from ``register_op`` (process-wide) or a TOML rules file (``--rules``, one analysis);
they are keyed by (domain, op), domain ``""`` being the standard ONNX domain and ``"*"`` any
domain, and are consulted before the built-in table ``semantics.TRF_RULES``.  With
``assume_pointwise`` (``--assume-pointwise``), an op with no rule at all whose output keeps the
input's spatial shape is treated as pointwise; every node analysed with a declared or assumed
rule is listed in ``Analysis.rule_notes``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from .errors import RFGraphError
from .fields import Span
from .semantics import geometry
from .semantics.convolution import conv_rule
from .semantics.pooling import pool_rule
from .semantics.transfer import (
    Edge,
    OutTransfer,
    Transfer,
    broadcast,
    mixed_maps,
    pointwise,
    strip_spatial,
    window,
    with_sizes,
)

Param = int | Sequence[int] | str | Callable[[Mapping[str, Any]], Any]
ANY_DOMAIN = "*"


class RuleKind(str, Enum):
    """What a declared op does to spatial positions."""

    WINDOW = "window"
    CONV = "conv"
    POOL = "pool"
    POINTWISE = "pointwise"
    GLOBAL = "global"


def normalise_domain(domain: str | None) -> str:
    """The standard domain has two spellings: ``""`` and ``"ai.onnx"``."""
    return "" if domain in (None, "", "ai.onnx") else str(domain)


@dataclass(frozen=True)
class OpSpec:
    """One declared rule: op, domain, kind and its window numbers (or a callable rule)."""

    op: str
    domain: str = ""
    kind: RuleKind | None = RuleKind.WINDOW
    kernel: Param | None = None
    stride: Param = 1
    pad: Param = 0
    dilation: Param = 1
    rule: Callable[[Mapping[str, Any]], Any] | None = None
    source: str = "register_op"

    @property
    def key(self) -> tuple[str, str]:
        return (self.domain, self.op)

    def label(self) -> str:
        dom = f"{self.domain}::" if self.domain else ""
        return f"{dom}{self.op}"

    def resolve(self, attrs: Mapping[str, Any], node: str) -> Resolved:
        """Kind and per-axis numbers for one node (a callable rule is evaluated here)."""
        if self.rule is None:
            return Resolved(self.kind or RuleKind.WINDOW, self.kernel, self.stride, self.pad,
                            self.dilation)
        try:
            out = self.rule(dict(attrs))
        except Exception as exc:  # noqa: BLE001 - a user's callable: reported against the node
            raise RFGraphError(f"node '{node}' ({self.op}): the rule declared for it failed: "
                               f"{type(exc).__name__}: {exc}") from None
        if isinstance(out, str):
            return Resolved(_kind(out, self.label()), None, 1, 0, 1)
        if not isinstance(out, Mapping):
            raise RFGraphError(f"node '{node}' ({self.op}): the declared rule returned "
                               f"{type(out).__name__}; expected 'pointwise', 'global' or a dict")
        kind = _kind(out.get("kind", "window"), self.label())
        return Resolved(kind, out.get("kernel"), out.get("stride", 1), out.get("pad", 0),
                        out.get("dilation", 1))


@dataclass(frozen=True)
class Resolved:
    """A rule's kind and numbers for one node, before expansion to per-axis lists."""

    kind: RuleKind
    kernel: Param | None
    stride: Param
    pad: Param
    dilation: Param


def _kind(value: Any, label: str) -> RuleKind:
    try:
        return RuleKind(str(value).lower())
    except ValueError:
        kinds = ", ".join(k.value for k in RuleKind)
        raise RFGraphError(f"rule for {label}: kind '{value}' is not one of {kinds}") from None


class RuleSet:
    """Declared rules keyed by (domain, op); ``find`` prefers an exact domain over ``"*"``."""

    def __init__(self, specs: Sequence[OpSpec] = ()) -> None:
        self.specs: dict[tuple[str, str], OpSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: OpSpec, replace: bool = False) -> None:
        old = self.specs.get(spec.key)
        if old is not None and not replace:
            raise RFGraphError(f"a rule for {spec.label()} is already declared ({old.source}); "
                               f"pass replace=True to change it")
        self.specs[spec.key] = spec

    def find(self, op: str, domain: str | None) -> OpSpec | None:
        dom = normalise_domain(domain)
        return self.specs.get((dom, op)) or self.specs.get((ANY_DOMAIN, op))

    def __len__(self) -> int:
        return len(self.specs)


_REGISTRY = RuleSet()  # register_op's rules; each analysis's RuleTable copies them when made


def registered_rules() -> RuleSet:
    """A copy of the rules declared with ``register_op`` (what a new analysis sees)."""
    return RuleSet(list(_REGISTRY.specs.values()))


# ---------------------------------------------------------------- declaring rules


def register_op(op: str, kernel: Param | None = None, stride: Param = 1, pad: Param = 0,
                dilation: Param = 1, *, kind: str | RuleKind | None = None, domain: str = "",
                rule: Callable[[Mapping[str, Any]], Any] | None = None,
                replace: bool = False) -> OpSpec:
    """Declare the spatial behaviour of ``op`` (in ``domain``; ``"*"``: any) for every analysis.

    ``register_op("MyPool", kernel=3, stride=2, pad=1, domain="com.example")``,
    ``register_op("MyAct", kind="pointwise")``, ``register_op("MyAttn", kind="global")``,
    ``register_op("ConvRelu", kind="conv", domain="com.example")`` or
    ``register_op("MyOp", rule=lambda attrs: {"kernel": attrs["k"], "stride": attrs["s"]})``.
    """
    spec = make_spec(op, kernel, stride, pad, dilation, kind, domain, rule, "register_op")
    _REGISTRY.add(spec, replace)
    return spec


def unregister_op(op: str, domain: str = "") -> None:
    """Remove a rule declared with ``register_op`` (no error if there is none)."""
    _REGISTRY.specs.pop((normalise_domain(domain) if domain != ANY_DOMAIN else ANY_DOMAIN, op), None)


def make_spec(op: str, kernel: Param | None, stride: Param, pad: Param, dilation: Param,
              kind: str | RuleKind | None, domain: str | None, rule: Callable[..., Any] | None,
              source: str) -> OpSpec:
    """Validate a declaration and return its OpSpec; errors name the op and the source."""
    if not op or not isinstance(op, str):
        raise RFGraphError(f"{source}: an op rule needs a non-empty op name")
    dom = ANY_DOMAIN if domain == ANY_DOMAIN else normalise_domain(domain)
    label = f"{dom + '::' if dom else ''}{op}"
    if rule is not None:
        if not callable(rule):
            raise RFGraphError(f"{source}: rule for {label} must be callable")
        return OpSpec(op, dom, None, rule=rule, source=source)
    if kind is None:
        if kernel is None:
            raise RFGraphError(f"{source}: rule for {label} needs kernel=..., kind='pointwise' | "
                               f"'global' | 'conv' | 'pool', or rule=callable")
        kind = RuleKind.WINDOW
    k = _kind(kind.value if isinstance(kind, RuleKind) else kind, label)
    if k is RuleKind.WINDOW and kernel is None:
        raise RFGraphError(f"{source}: window rule for {label} needs a kernel")
    for name, value in (("kernel", kernel), ("stride", stride), ("pad", pad), ("dilation", dilation)):
        _check_param(value, name, label, source)
    return OpSpec(op, dom, k, kernel, stride, pad, dilation, None, source)


def _check_param(value: Any, name: str, label: str, source: str) -> None:
    """Reject values that are neither int, int list, 'attr:NAME' nor callable."""
    if value is None or callable(value) or isinstance(value, bool):
        if isinstance(value, bool):
            raise RFGraphError(f"{source}: {name} of {label} must be an integer, not {value}")
        return
    if isinstance(value, int):
        return
    if isinstance(value, str):
        if not value.startswith("attr:") or len(value) <= 5:
            raise RFGraphError(f"{source}: {name} of {label} is '{value}'; a string must be "
                               f"'attr:NAME' (read the node attribute NAME)")
        return
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool)
                                                for v in value):
        return
    raise RFGraphError(f"{source}: {name} of {label} must be an int, a list of ints, "
                       f"'attr:NAME' or a callable, not {value!r}")


def load_rules(path: str | Path) -> RuleSet:
    """Read a TOML rules file: ``[[op]]`` tables with name, domain, kind, kernel, stride, pad..."""
    data = _read_toml(Path(path))
    tables = data.get("op")
    if not isinstance(tables, list) or not tables:
        raise RFGraphError(f"{path}: no [[op]] tables; see docs/custom_ops.md for the format")
    rules = RuleSet()
    known = {"name", "domain", "kind", "kernel", "stride", "pad", "dilation"}
    for i, t in enumerate(tables):
        where = f"{path}: [[op]] #{i + 1}"
        if not isinstance(t, dict):
            raise RFGraphError(f"{where}: expected a table of name, kernel, stride..., got {type(t).__name__}")
        extra = sorted(set(t) - known)
        if extra:
            raise RFGraphError(f"{where}: unknown keys {extra} (allowed: {sorted(known)})")
        if "name" not in t:
            raise RFGraphError(f"{where}: missing 'name'")
        spec = make_spec(str(t["name"]), t.get("kernel"), t.get("stride", 1), t.get("pad", 0),
                         t.get("dilation", 1), t.get("kind"), t.get("domain", ""), None,
                         f"{path}")
        rules.add(spec)
    return rules


def _read_toml(path: Path) -> dict[str, Any]:
    """Parse TOML with ``tomllib`` (Python 3.11+) or ``tomli``; one-line errors."""
    try:
        import tomllib as toml  # type: ignore[import-not-found]
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as toml  # type: ignore[import-not-found]
        except ModuleNotFoundError:
            raise RFGraphError("reading a rules file needs Python 3.11+ or the 'tomli' package") from None
    if not path.is_file():
        raise RFGraphError(f"{path}: rules file not found")
    try:
        return toml.loads(path.read_text(encoding="utf-8"))
    except (toml.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RFGraphError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:  # arrays or tables nested thousands deep
        raise RFGraphError(f"{path}: not a rules file (values nested too deep to read)") from None


def as_ruleset(rules: RuleSet | str | Path | Sequence[str | Path] | None) -> RuleSet | None:
    """A RuleSet from a RuleSet, a rules-file path, or several paths (later files win)."""
    if rules is None or isinstance(rules, RuleSet):
        return rules
    paths = [rules] if isinstance(rules, (str, Path)) else list(rules)
    merged = RuleSet()
    for p in paths:
        for spec in load_rules(p).specs.values():
            merged.add(spec, replace=True)
    return merged


# ---------------------------------------------------------------- TRF rules for rules.RuleTable


def declared_rule(spec: OpSpec, notes: dict[str, str]) -> Callable[[Any], Any]:
    """The TRF rule of a declaration; each node it runs on is noted in ``notes``."""

    def rule(ctx: Any) -> Any:
        resolved = spec.resolve(ctx.attrs, ctx.name)
        transfer = apply_resolved(resolved, ctx)
        notes[ctx.name] = (f"{ctx.op}: declared {resolved.kind.value} rule for "
                           f"{spec.label()} ({spec.source})")
        return transfer

    return rule


def assumed_pointwise_rule(notes: dict[str, str]) -> Callable[[Any], Any]:
    """``assume_pointwise``: a rule treating an unknown op as pointwise, if shapes allow."""

    def rule(ctx: Any) -> Any:
        keep_spatial_shape(ctx)
        notes[ctx.name] = (f"{ctx.op}: ASSUMED pointwise (--assume-pointwise; no rule, output "
                           f"keeps the input's spatial shape)")
        return _all_outputs(pointwise(ctx, 1), len(ctx.node.output))

    return rule


def keep_spatial_shape(ctx: Any) -> None:
    """Refuse to assume pointwise unless every output has the spatial shape of data input 0."""
    slots = ctx.data_slots()
    if slots != [0]:
        raise ctx.unsupported("no rule for this op; --assume-pointwise needs exactly one "
                              "input-dependent input, at position 0")
    in_shape = ctx.in_shapes[0]
    for i, out in enumerate(ctx.out_shapes):
        if not ctx.node.output[i]:
            continue
        if in_shape is None or out is None or None in in_shape[2:] or None in out[2:]:
            raise ctx.unsupported("no rule for this op, and its output shape is unknown, so "
                                  "--assume-pointwise cannot check that it keeps the spatial "
                                  "shape; declare a rule with --rules")
        if len(out) != len(in_shape) or tuple(out[2:]) != tuple(in_shape[2:]):
            raise ctx.unsupported(f"no rule for this op, and its output {list(out)} does not keep "
                                  f"the input's spatial shape {list(in_shape)}, so it cannot be "
                                  f"assumed pointwise; declare a rule with --rules")


def apply_resolved(r: Resolved, ctx: Any) -> Any:
    """The Transfer of a node under a declared (resolved) rule."""
    n_out = len(ctx.node.output)
    if r.kind is RuleKind.POINTWISE:
        if ctx.data_slots() == [0]:
            return _all_outputs(pointwise(ctx, 1), n_out)
        return _all_outputs(broadcast(ctx), n_out)
    if r.kind is RuleKind.GLOBAL:
        return _global(ctx)
    _only_input_zero(ctx)
    if r.kind is RuleKind.CONV:
        return _all_outputs(conv_rule(1)(ctx), n_out)
    if r.kind is RuleKind.POOL:
        return _all_outputs(pool_rule(ctx), n_out)
    kernel, stride, pads, dilation = window_numbers(r, ctx.attrs, ctx.rank(0) - 2, ctx)
    spans = [Span.layer(k, s, p, d) for k, s, p, d in zip(kernel, stride, pads[0], dilation)]
    return _all_outputs(window(ctx, spans), n_out)


def _only_input_zero(ctx: Any) -> None:
    if any(s != 0 for s in ctx.data_slots()):
        raise ctx.unsupported("declared window rule, but inputs other than input 0 depend on the "
                              "model input (declare it 'pointwise' or 'global' instead)")


def _all_outputs(transfer: Any, n_out: int) -> Any:
    """The same positions for every output of the node (declared rules describe the node)."""
    first = transfer.outputs[0]
    return Transfer(tuple(first for _ in range(n_out)), transfer.size_dependent, transfer.mix_reason)


def _global(ctx: Any) -> Any:
    """Every output unit reads every position of every data input."""
    lay = ctx.layouts[0]
    spatial = [t for t, parts in enumerate(lay) if any(a >= 0 for a, _ in parts)]
    edges = tuple(Edge(s, mixed_maps(ctx.layouts[s], [t for t, p in enumerate(ctx.layouts[s])
                                                       if any(a >= 0 for a, _ in p)]))
                  for s in ctx.data_slots())
    out = OutTransfer(with_sizes(strip_spatial(lay, spatial), ctx.out_shapes[0]), edges)
    return Transfer(tuple(out for _ in ctx.node.output), mix_reason=f"{ctx.op}: declared global rule")


def window_numbers(r: Resolved, attrs: Mapping[str, Any], n: int, ctx: Any = None
                   ) -> tuple[list[int], list[int], tuple[list[int], list[int]], list[int]]:
    """Kernel, stride, (begin pads, end pads) and dilation per spatial axis (ends = begins if
    only begins are given)."""
    name = ctx.name if ctx is not None else "?"
    kernel = _expand(r.kernel, attrs, n, "kernel", name)
    stride = _expand(r.stride, attrs, n, "stride", name)
    dilation = _expand(r.dilation, attrs, n, "dilation", name)
    pad_all = _expand(r.pad, attrs, n, "pad", name, allow_double=True)
    begins, ends = (pad_all[:n], pad_all[n:]) if len(pad_all) == 2 * n else (pad_all, pad_all)
    if any(k <= 0 for k in kernel) or any(s <= 0 for s in stride) or any(d <= 0 for d in dilation):
        raise RFGraphError(f"node '{name}': declared kernel {kernel}, stride {stride}, dilation "
                           f"{dilation} must be positive")
    return kernel, stride, (begins, ends), dilation


def _expand(value: Param | None, attrs: Mapping[str, Any], n: int, what: str, node: str,
            allow_double: bool = False) -> list[int]:
    """One parameter as a per-axis int list (an int repeats; 'attr:X' and callables are read)."""
    # what a callable returns, or a node attribute, is unchecked: Any
    got: Any = value(dict(attrs)) if callable(value) else value
    if isinstance(got, str) and got.startswith("attr:"):
        key = got[5:]
        if key not in attrs:
            raise RFGraphError(f"node '{node}': the declared {what} reads attribute '{key}', which "
                               f"the node does not have (attributes: {sorted(attrs)})")
        got = attrs[key]
    if got is None:
        raise RFGraphError(f"node '{node}': the declared rule gives no {what}")
    if _is_whole(got):
        return [int(got)] * n
    if isinstance(got, (str, bytes)) or not isinstance(got, Iterable) or not all(_is_whole(v) for v in got):
        raise RFGraphError(f"node '{node}': the declared {what} is {got!r}; expected an int or a list "
                           f"of ints (one per spatial axis)")
    values = [int(v) for v in got]
    if len(values) == n or (allow_double and len(values) == 2 * n):
        return values
    if len(values) == 1:
        return values * n
    raise RFGraphError(f"node '{node}': declared {what} {values} has {len(values)} values for "
                       f"{n} spatial axes")


def _is_whole(value: object) -> bool:
    """An int (or integral float, as TOML and attributes may give); never a bool."""
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer())


# ---------------------------------------------------------------- shapes for declared ops


def declare_shapes(model: onnx.ModelProto, find: Callable[[str, str], OpSpec | None]) -> onnx.ModelProto:
    """Give declared ops' outputs the shapes their rules imply, so shape inference can go on.

    ONNX shape inference knows nothing of custom ops; without this, every tensor after one has an
    unknown shape.  Window rules give ``floor((n + p_begin + p_end - d(k-1) - 1) / s) + 1``
    (channels: the input's, or the Conv weight's first dim for kind 'conv'); pointwise and global
    rules keep the input's shape.  Shapes already known (from the file) are kept.  ``find``: the
    declared rule of an op (``RuleTable.find``).
    """
    from .onnx_import import collect_shapes, infer_shapes

    declared = [i for i, nd in enumerate(model.graph.node) if find(nd.op_type, nd.domain)]
    if not declared:
        return model
    for _ in range(len(declared) + 1):
        shapes = collect_shapes(model)
        added = False
        for i in declared:
            node = model.graph.node[i]
            added |= _declare_node(model, node, find(node.op_type, node.domain), shapes)
        if not added:
            break
        model = infer_shapes(model)
    return model


def _declare_node(model: onnx.ModelProto, node: onnx.NodeProto, spec: OpSpec | None,
                  shapes: Mapping[str, Any]) -> bool:
    """Add value_info for a declared node's outputs whose shape is unknown; True if any added."""
    if spec is None or not node.input or not node.input[0]:
        return False
    in_shape = shapes.get(node.input[0])
    todo = [o for o in node.output if o and (shapes.get(o) is None or None in shapes[o][2:])]
    if not todo or in_shape is None or len(in_shape) < 3 or None in in_shape[2:]:
        return False
    from .onnx_import import attributes, elem_type

    attrs = attributes(node)
    try:
        out = _output_shape(spec.resolve(attrs, node.name or node.op_type), attrs, tuple(in_shape),
                            node, shapes)
    except RFGraphError:
        return False  # the rule itself reports the problem when the node is analysed
    if out is None:
        return False
    elem = elem_type(model, node.input[0])
    for name in todo:
        for vi in list(model.graph.value_info):
            if vi.name == name:
                model.graph.value_info.remove(vi)
        model.graph.value_info.append(helper.make_tensor_value_info(name, elem, list(out)))
    return True


def _output_shape(r: Resolved, attrs: Mapping[str, Any], in_shape: tuple, node: onnx.NodeProto,
                  shapes: Mapping[str, Any]) -> tuple | None:
    """Output shape implied by a resolved rule (None when it cannot be derived)."""
    if r.kind in (RuleKind.POINTWISE, RuleKind.GLOBAL):
        return in_shape
    n = len(in_shape) - 2
    channels = in_shape[1]
    if r.kind in (RuleKind.CONV, RuleKind.POOL):
        w = shapes.get(node.input[1]) if r.kind is RuleKind.CONV and len(node.input) > 1 else None
        if r.kind is RuleKind.CONV:
            channels = w[0] if w else None
        kernel = list(attrs.get("kernel_shape", w[2:] if w else []))
        if len(kernel) != n:
            return None
        geo = geometry.window(node.op_type, node.name, attrs, kernel, in_shape[2:])
        axes, ceil = geo.axes, geo.ceil_mode
    else:
        kernel, stride, (begins, ends), dilation = window_numbers(r, attrs, n)
        axes, ceil = tuple(map(geometry.AxisWindow, kernel, stride, dilation, begins, ends)), False
    sizes = []
    for size, ax in zip(in_shape[2:], axes):
        if size + ax.pad_begin + (ax.pad_end or 0) < ax.k_eff:
            raise RFGraphError(f"node '{node.name}': declared window {ax.kernel} is larger than its "
                               f"padded input {size + ax.pad_begin + (ax.pad_end or 0)}")
        sizes.append(geometry.output_size(ax, size, ceil))
    return (in_shape[0], channels, *sizes)


__all__ = ["OpSpec", "RuleKind", "RuleSet", "declare_shapes", "load_rules",
           "register_op", "unregister_op"]
