"""rfgraph: theoretical and effective receptive fields of any ONNX model.

``rfgraph.analyze(model)`` returns an ``Analysis`` with the receptive field (r, S, P per spatial
axis, input region of any unit, alignment of every merge) of every tensor of the graph.
"""

__version__ = "0.1.0"

from .analysis import Analysis, EndPoint, analyze  # noqa: E402
from .custom_ops import register_op, unregister_op  # noqa: E402
from .erf import compute_erf  # noqa: E402
from .errors import RFGraphError  # noqa: E402
from .frameworks import from_keras, from_torch  # noqa: E402
from .paths import path_histogram  # noqa: E402

__all__ = ["Analysis", "EndPoint", "RFGraphError", "analyze", "compute_erf", "from_keras", "from_torch",
           "path_histogram", "register_op", "unregister_op", "__version__"]
