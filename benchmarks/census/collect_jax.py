"""Flax (nnx) modules (random init) exported by jax2onnx, saved as ONNX.

Run with an interpreter that has jax, flax and jax2onnx (a separate venv: ``pip install jax
jaxlib flax jax2onnx``): ``VENV/bin/python benchmarks/census/collect_jax.py [--cache DIR]
[--only NAME ...]``.  The modules are in jax_nets.py; each export runs in its own subprocess under
a time limit, a failure is a skip with its reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import Entry, collector_arguments, export_all, export_in_subprocess, model_entry

# name -> (module in jax_nets, NHWC input shape)
MODELS: dict[str, tuple[str, tuple[int, ...]]] = {
    "flax_dense_prediction": ("DensePrediction", (1, 64, 64, 3)),
    "flax_classifier": ("Classifier", (1, 28, 28, 1)),
    "flax_residual_stack": ("ResidualStack", (1, 96, 96, 3)),
}

EXPORT_SCRIPT = r'''
import sys
sys.path.insert(0, sys.argv[4])
from flax import nnx
from jax2onnx import to_onnx
import jax_nets
module = getattr(jax_nets, sys.argv[1])(nnx.Rngs(0))
to_onnx(module, [tuple(int(d) for d in sys.argv[2].split("x"))], return_mode="file", output_path=sys.argv[3])
'''


def export_one(cache: Path, name: str, module: str, shape: tuple[int, ...], limit: float) -> Entry:
    """Export one module in a subprocess (kept when already there)."""
    dims = "x".join(map(str, shape))
    entry, out = model_entry(cache, "jax", name, origin=f"jax_nets.{module}", note=f"input {dims} (NHWC)")
    return export_in_subprocess(entry, out, [EXPORT_SCRIPT, module, dims, str(out) + ".tmp",
                                             str(Path(__file__).parent)], limit, "export")


def main(argv: list[str] | None = None) -> int:
    export_all(collector_arguments(__doc__, 300.0).parse_args(argv), MODELS, export_one)
    return 0


if __name__ == "__main__":
    sys.exit(main())
