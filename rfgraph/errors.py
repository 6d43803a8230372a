"""Errors rfgraph raises on user input; each message says what is wrong and what to do."""

from __future__ import annotations


class RFGraphError(Exception):
    """Base class: an error caused by the user's model or arguments (CLI exit code 2)."""


class ModelLoadError(RFGraphError):
    """The file is missing, is not an ONNX model, is truncated, or is refused as unsafe."""


class GraphStructureError(RFGraphError):
    """The graph is not a valid DAG: cycle, duplicate tensor names, dangling inputs."""


class DynamicShapeError(RFGraphError):
    """A spatial size is unknown after shape inference; an --input-shape is needed."""


class UnsupportedOpError(RFGraphError):
    """No receptive-field rule exists for a node (or its attributes); names node and op."""

    def __init__(self, node: str, op: str, why: str = "no receptive-field rule for this op") -> None:
        self.node, self.op, self.why = node, op, why
        super().__init__(f"node '{node}' ({op}): {why}")


class InvalidAttributeError(RFGraphError):
    """A node carries attribute values that make no sense (zero stride, negative kernel...)."""


class InputSizeError(RFGraphError):
    """The model cannot run at the requested input size (a map shrinks to nothing, a Reshape or
    broadcast fixed at export time no longer fits); says where and, when known, which sizes work.
    ``fixed_target``: a Reshape whose constant target only the exported size fits."""

    def __init__(self, message: str, node: str = "", op: str = "", vanished: bool = False,
                 fixed_target: bool = False) -> None:
        self.node, self.op, self.vanished, self.fixed_target = node, op, vanished, fixed_target
        super().__init__(message)
