"""Arguments and loading shared by every command that reads a model."""

from __future__ import annotations

import argparse

from ..analysis import Analysis, analyze
from ..onnx_import import parse_input_shapes
from ..report import FORMATS


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """MODEL plus the options that control how it is read."""
    parser.add_argument("model", help="ONNX file, or zoo:NAME for a bundled model_zoo graph")
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME:1x3x224x224",
                        help="fix an input's shape (dynamic or to study another size); repeatable")
    parser.add_argument("--input", dest="input_name", metavar="NAME",
                        help="the input the fields refer to (default: first input of rank >= 3)")
    parser.add_argument("--layout", metavar="NCHW", help="input layout when it cannot be inferred (NHWC, NCL...)")
    parser.add_argument("--rules", action="append", default=[], metavar="RULES.toml",
                        help="TOML file declaring the spatial behaviour of ops rfgraph does not know "
                             "(custom domains); repeatable; see docs/custom_ops.md")
    parser.add_argument("--assume-pointwise", action="store_true",
                        help="treat unknown ops whose output keeps the input's spatial shape as "
                             "pointwise (each such node is listed in the report)")


def add_format_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")


def load_analysis(args: argparse.Namespace) -> Analysis:
    """Run the TRF analysis with the model options of ``add_model_args``."""
    return analyze(args.model, parse_input_shapes(args.input_shape), args.input_name, args.layout,
                   rules=getattr(args, "rules", None) or None,
                   assume_pointwise=getattr(args, "assume_pointwise", False))
