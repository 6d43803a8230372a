"""PyTorch and Keras entry points: export with the framework's own ONNX exporter, then ``analyze``.

``from_torch`` uses ``torch.onnx.export`` (the TorchScript-based exporter by default,
``dynamo=False``); ``from_keras`` uses ``tf2onnx.convert.from_keras``.  Both frameworks are
optional extras (``pip install 'rfgraph[torch]'``, ``'rfgraph[keras]'``) imported only here, when
called.  Tensor and node names are mapped back to module (layer) names where the exporter keeps
them in its scoped node names: a tensor made by the only node of module ``layer1.0.conv1`` is
called ``layer1.0.conv1``; one of several nodes of a module is ``layer1.0/Add``.  Graph inputs keep
their names, and so do outputs named with ``output_names`` (torch) or by tf2onnx.
``export_torch`` returns the unrenamed model and
the name map for callers who want both.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from .analysis import Analysis, analyze
from .errors import RFGraphError

# A node's scope: (module path, label of the node inside it), or None when the name says nothing.
ScopeOf = Callable[[onnx.NodeProto], "tuple[str, str] | None"]


class MissingDependencyError(RFGraphError):
    """An optional framework (PyTorch, TensorFlow, tf2onnx) is not installed."""


class ExportError(RFGraphError):
    """The framework's ONNX exporter refused the model."""


def require(module: str, extra: str, what: str) -> Any:
    """Import an optional dependency, or raise a one-line error naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"{what} needs the '{module}' package, which is not installed; "
            f"install it with: pip install 'rfgraph[{extra}]'") from None


# ------------------------------------------------------------------------------------ names


def rename_tensors(model: onnx.ModelProto, scope_of: ScopeOf, keep: Iterable[str] = (),
                   outputs: bool = True) -> dict[str, str]:
    """Rename node outputs (and nodes) after their module, in place; returns {old: new}.

    Graph inputs, initializers and ``keep`` are never renamed, graph outputs only if ``outputs``;
    a name that would collide with another keeps its exporter name.
    """
    g = model.graph
    fixed = set(keep) | {i.name for i in g.input} | {t.name for t in g.initializer}
    if not outputs:
        fixed |= {o.name for o in g.output}
    labels = _labels(g.node, scope_of)
    counts = Counter(labels.values())
    taken = fixed | {out for n in g.node for out in n.output}
    mapping: dict[str, str] = {}
    for idx, node in enumerate(g.node):
        new = labels.get(idx)
        outs = [o for o in node.output if o]
        if new is None or counts[new] > 1 or len(outs) != 1 or outs[0] in fixed or new in taken:
            continue
        mapping[outs[0]] = new
        taken.add(new)
        node.name = new
    _apply(model, mapping)
    return mapping


def _labels(nodes: Sequence[onnx.NodeProto], scope_of: ScopeOf) -> dict[int, str]:
    """Module path for a module's only node, ``path/label`` for one of several."""
    scopes = {i: s for i, n in enumerate(nodes) if (s := scope_of(n)) is not None}
    per_module = Counter(path for path, _ in scopes.values())
    return {i: (path if per_module[path] == 1 and path else f"{path}/{label}" if path else label)
            for i, (path, label) in scopes.items()}


def _apply(model: onnx.ModelProto, mapping: Mapping[str, str]) -> None:
    """Rewrite every reference to a renamed tensor (node inputs/outputs, value_info)."""
    for node in model.graph.node:
        node.input[:] = [mapping.get(t, t) for t in node.input]
        node.output[:] = [mapping.get(t, t) for t in node.output]
    for vi in list(model.graph.value_info) + list(model.graph.output):
        vi.name = mapping.get(vi.name, vi.name)


def torch_scope(modules: Iterable[str]) -> ScopeOf:
    """Scope of a TorchScript-exporter node name such as ``/layer1/layer1.0/conv1/Conv``.

    The exporter writes one path component per module, either its attribute name (``conv1``) or
    its qualified name (``layer1.0``); each is resolved against ``named_modules()``.
    """
    known = set(modules)

    def scope_of(node: onnx.NodeProto) -> tuple[str, str] | None:
        parts = node.name.split("/")
        if len(parts) < 2 or parts[0] != "":
            return None
        path = ""
        for comp in parts[1:-1]:
            if comp in known and (not path or comp.startswith(path + ".")):
                path = comp
            elif (path + "." + comp if path else comp) in known:
                path = path + "." + comp if path else comp
            else:
                return None
        return path, parts[-1]

    return scope_of


def keras_scope(layers: Iterable[str]) -> ScopeOf:
    """Scope of a tf2onnx node name such as ``model/conv2d/BiasAdd``: the Keras layer it names."""
    known = set(layers)

    def scope_of(node: onnx.NodeProto) -> tuple[str, str] | None:
        parts = [p for p in node.name.split("/") if p]
        hits = [i for i, p in enumerate(parts[:-1]) if p in known]
        if not hits:
            return None
        i = hits[-1]
        return parts[i], "/".join(parts[i + 1:]) or node.op_type

    return scope_of


# ------------------------------------------------------------------------------------ PyTorch


def export_torch(module: Any, example_input: Any, *, input_names: Sequence[str] | None = None,
                 output_names: Sequence[str] | None = None, opset: int | None = None,
                 dynamo: bool = False, rename: bool = True) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Export ``module`` with ``torch.onnx.export``; returns the model and {exporter name: module name}.

    ``example_input`` is a tensor or a tuple of positional tensors; ``rename=False`` leaves the
    exporter's names (the map is then empty).
    """
    torch = require("torch", "torch", "rfgraph.from_torch")
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {"dynamo": dynamo}
    if opset is not None:
        kwargs["opset_version"] = opset
    was_training = bool(getattr(module, "training", False))
    module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, buf, input_names=list(input_names or []) or None,
                              output_names=list(output_names or []) or None, **kwargs)
    except MissingDependencyError:
        raise
    except ImportError as exc:  # the dynamo exporter needs onnxscript
        raise MissingDependencyError(f"torch.onnx.export needs '{exc.name}': pip install {exc.name}") from None
    except Exception as exc:  # noqa: BLE001 - any exporter failure is a user-facing error
        raise ExportError(f"torch.onnx.export failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    finally:
        module.train(was_training)
    model = onnx.load_from_string(buf.getvalue())
    mapping: dict[str, str] = {}
    if rename:
        names = [name for name, _ in module.named_modules() if name]
        mapping = rename_tensors(model, torch_scope(names), keep=output_names or ())
    return model, mapping


def from_torch(module: Any, example_input: Any, *, input_names: Sequence[str] | None = None,
               output_names: Sequence[str] | None = None, opset: int | None = None,
               dynamo: bool = False, rename: bool = True, layout: str | None = None,
               save: str | os.PathLike[str] | None = None) -> Analysis:
    """Receptive fields of a ``torch.nn.Module`` at the shape of ``example_input``.

    Exports with ``torch.onnx.export`` (legacy exporter unless ``dynamo=True``) and analyses the
    first input; tensors carry module names where the exporter kept them (see module docstring).
    ``save``: also write the exported (renamed) model there, for the CLI or another tool.
    """
    target = _save_target(save)
    model, _ = export_torch(module, example_input, input_names=input_names,
                            output_names=output_names, opset=opset, dynamo=dynamo, rename=rename)
    _save(model, target)
    return analyze(model, layout=layout)


def _save_target(save: str | os.PathLike[str] | None) -> Path | None:
    """The checked path an exported model will be written to (checked before the export runs)."""
    from .outputs import check_output

    return None if save is None else check_output(save, suffix=".onnx", what="exported model")


def _save(model: onnx.ModelProto, target: Path | None) -> None:
    """Write the exported model atomically (nothing when no path was asked for)."""
    from .outputs import write_atomically

    if target is not None:
        write_atomically(target, lambda tmp: tmp.write_bytes(model.SerializeToString()))


# ------------------------------------------------------------------------------------ Keras


def export_keras(model: Any, input_signature: Any = None, opset: int | None = None,
                 rename: bool = True, input_shape: Sequence[int] | None = None,
                 ) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Convert a Keras model with ``tf2onnx.convert.from_keras``; returns the model and name map.
    Without ``input_signature``, the model's inputs with a batch of one (``_batch_of_one``).
    Keras 3's grouped convolutions are traced without XLA and its exact GELU's Erfc is written as
    1 - Erf (``_keras_traceable``): tf2onnx converts neither (ConvNeXt's depthwise convs)."""
    tf = require("tensorflow", "keras", "rfgraph.from_keras")
    tf2onnx = require("tf2onnx", "keras", "rfgraph.from_keras")
    convert = importlib.import_module("tf2onnx.convert")
    if not hasattr(model, "output_names") and hasattr(model, "outputs"):  # Keras 3 has none
        model.output_names = [t.name.split(":")[0] for t in model.outputs]
    if input_signature is None:
        input_signature = _batch_of_one(tf, model, input_shape)
    try:
        with _keras_traceable():
            proto, _ = convert.from_keras(model, input_signature=input_signature, opset=opset,
                                          custom_op_handlers={"Erfc": (_erfc_as_one_minus_erf, [])})
    except Exception as exc:  # noqa: BLE001 - any converter failure is a user-facing error
        raise ExportError(f"tf2onnx {getattr(tf2onnx, '__version__', '')} could not convert the "
                          f"model ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    mapping: dict[str, str] = {}
    if rename:
        layers = [layer.name for layer in getattr(model, "layers", [])]
        mapping = rename_tensors(proto, keras_scope(layers), outputs=False)
    return proto, mapping


def _batch_of_one(tf: Any, model: Any, input_shape: Sequence[int] | None) -> list[Any] | None:
    """tf2onnx's signature for the model's inputs, each with a batch of one (a single input: the
    whole ``input_shape`` where given).  The analysis reads one input, and tf2onnx mis-converts
    some graphs whose batch is left dynamic (keras-hub's SegFormer attention: a Reshape got the
    key count as its batch, and the ONNX model ran at no batch size)."""
    inputs = list(getattr(model, "inputs", None) or [])
    specs = []
    for tensor in inputs:
        shape = list(tensor.shape)
        if input_shape is not None and len(inputs) == 1:
            shape = list(input_shape)
        elif shape and shape[0] is None:
            shape[0] = 1
        name = str(getattr(tensor, "name", "") or "").split(":")[0] or None
        specs.append(tf.TensorSpec(shape, tensor.dtype, name=name))
    return specs or None


@contextlib.contextmanager
def _keras_traceable() -> Iterator[None]:
    """Keras 3 (TensorFlow backend) runs grouped and channels-first 3-D convolutions inside an
    XLA-compiled tf.function, which TensorFlow's CPU kernels need but tf2onnx cannot inline (it
    leaves a StatefulPartitionedCall); while converting, the plain convolution is traced instead,
    a grouped Conv2D that tf2onnx writes as an ONNX Conv with ``group``."""
    try:
        nn: Any = importlib.import_module("keras.src.backend.tensorflow.nn")
    except ImportError:  # Keras 2: no XLA wrapper
        yield
        return
    tf = importlib.import_module("tensorflow")
    original = nn.conv

    def plain_conv(inputs: Any, kernel: Any, strides: Any = 1, padding: str = "valid", data_format: Any = None,
                   dilation_rate: Any = 1) -> Any:
        layout = nn._convert_data_format(data_format, len(inputs.shape))
        return tf.nn.convolution(inputs, kernel, strides, padding.upper(), data_format=layout,
                                 dilations=dilation_rate)

    nn.conv = plain_conv
    try:
        yield
    finally:
        nn.conv = original


def _erfc_as_one_minus_erf(ctx: Any, node: Any, name: str, args: Any) -> None:
    """tf2onnx handler for TensorFlow's Erfc (Keras 3's exact GELU), which ONNX lacks: 1 - Erf(x)."""
    import numpy as np

    node.type = "Erf"
    dtype = onnx.helper.tensor_dtype_to_np_dtype(ctx.get_dtype(node.output[0]))
    one = ctx.make_const(f"{name}/one", np.array(1, dtype)).output[0]
    ctx.insert_new_node_on_output("Sub", node.output[0], name=f"{name}/one_minus", inputs=[one, node.output[0]])


def from_keras(model: Any, input_signature: Any = None, *, opset: int | None = None,
               rename: bool = True, input_shape: Sequence[int] | None = None,
               layout: str | None = None, save: str | os.PathLike[str] | None = None) -> Analysis:
    """Receptive fields of a Keras model, converted by tf2onnx (NHWC inputs are detected).

    ``input_signature`` (a list of ``tf.TensorSpec``) is passed to tf2onnx; without it, the
    model's inputs are converted with a batch of one, and ``input_shape`` (e.g. (1, 224, 224, 3))
    fixes a single input's whole shape, for the conversion and the analysis.  Tensors carry Keras layer
    names where tf2onnx kept them.  ``save``: also write the converted model there.
    """
    target = _save_target(save)
    proto, _ = export_keras(model, input_signature, opset, rename, input_shape)
    _save(proto, target)
    return analyze(proto, {"": tuple(input_shape)} if input_shape else None, layout=layout)


__all__ = ["ExportError", "MissingDependencyError", "export_keras", "export_torch", "from_keras",
           "from_torch", "keras_scope", "rename_tensors", "torch_scope"]
