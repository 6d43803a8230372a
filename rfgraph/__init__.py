"""rfgraph: theoretical and effective receptive fields of any ONNX model.

``rfgraph.analyze(model)`` returns an ``Analysis`` with the receptive field (r, S, P per spatial
axis, input region of any unit, alignment of every merge) of every tensor of the graph.
"""

__version__ = "0.1.0"

from .analysis import Analysis, EndPoint, analyze
from .custom_ops import register_op, unregister_op
from .erf import compute_erf
from .errors import RFGraphError
from .frameworks import export_keras, export_torch, from_keras, from_torch
from .options import ModelOptions
from .paths import path_histogram

__all__ = [
    "Analysis", "EndPoint", "ModelOptions", "RFGraphError", "__version__", "analyze", "compute_erf", "export_keras",
    "export_torch", "from_keras", "from_torch", "path_histogram", "register_op", "unregister_op",
]
