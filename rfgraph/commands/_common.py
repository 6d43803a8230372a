"""Arguments and loading shared by every command that reads a model."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from tqdm import tqdm

from ..analysis import STAGES, Analysis, analyze
from ..errors import RFGraphError
from ..onnx_import import parse_input_shapes
from ..options import ModelOptions
from ..report import FORMATS
from ..unknown_size import require_size

SHOW_AFTER_S = 1.0  # the stage display appears only when an analysis takes longer than this


def add_model_args(parser: argparse.ArgumentParser, many: bool = False) -> None:
    """MODEL (``many``: one or more) plus the options that control how it is read."""
    if many:
        parser.add_argument("model", nargs="+",
                            help="ONNX files, folders (their *.onnx files) or zoo:NAME; MODEL@1x3x320x320 "
                                 "analyses it at that input size (MODEL@NAME:1x3x320x320 for input NAME)")
    else:
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
    parser.add_argument("--fill", action="append", default=[], metavar="NAME=VALUE",
                        help="a constant value for another input (an RNN state, a sample rate: "
                             "--fill sr=16000); an If whose condition it decides is replaced by its "
                             "branch; repeatable")


def add_pool_args(parser: argparse.ArgumentParser, work: str = "the models") -> None:
    """``--workers``, ``--scheduler`` and ``--no-progress`` of a command whose ``work`` runs on
    ``rfgraph.pool`` (the output is the same with any of them)."""
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help=f"run {work} on N local worker processes (one onnxruntime session "
                             f"each; default 1: in this process); the output is the same")
    parser.add_argument("--scheduler", metavar="tcp://HOST:8786",
                        help=f"run {work} on this Dask cluster (pip install 'rfgraph[cluster]')")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def show_progress(args: argparse.Namespace) -> bool:
    """A progress bar on stderr: on a terminal, unless --no-progress or -q."""
    return not (getattr(args, "no_progress", False) or getattr(args, "quiet", False)) and sys.stderr.isatty()


def parse_fills(items: Sequence[str]) -> dict[str, float]:
    """``["sr=16000", "state=0"]`` -> {"sr": 16000.0, "state": 0.0}."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise RFGraphError(f"--fill '{item}': expected NAME=NUMBER, e.g. --fill sr=16000")
    return out


MODEL_ERRORS = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NotImplemented",
                "RuntimeException", "InferenceError", "ValidationError", "ConvertError")


@contextmanager
def model_errors(model: str) -> Iterator[None]:
    """onnx's and onnxruntime's refusals of the model (a shape inference, a checker or a session
    error) raised by the engines that run it become one-line RFGraphErrors (exit 2)."""
    try:
        yield
    except Exception as exc:
        if not _from_onnx(exc):
            raise
        text = " ".join(str(exc).split())
        raise RFGraphError(f"{model}: onnx/onnxruntime cannot run the model: {text[:400]}") from None


def _from_onnx(exc: Exception) -> bool:
    """One of onnx's or onnxruntime's error types, or a RuntimeError raised by their own code (a
    failed assertion of onnx's C++ version converter about the model's attributes)."""
    kind = type(exc)
    if kind.__name__ in MODEL_ERRORS and kind.__module__.startswith(("onnx", "onnxruntime")):
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = tb.tb_frame.f_code.co_filename if tb is not None else ""
    return kind is RuntimeError and any(f"{os.sep}{pkg}{os.sep}" in where for pkg in ("onnx", "onnxruntime"))


def add_format_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")


def load_analysis(args: argparse.Namespace, needs_size: str | None = None) -> Analysis:
    """Run the TRF analysis with the model options of ``add_model_args`` (stages shown on a
    terminal when it takes long: a 1M-node graph takes about a minute); ``needs_size`` names a
    command that needs a concrete input size, refused in one line at an unknown one."""
    show = not getattr(args, "quiet", False) and sys.stderr.isatty()
    with stage_display(show) as on_stage:
        analysis = analyze(args.model, options=options_from_args(args), on_stage=on_stage)
    if needs_size:
        require_size(analysis, needs_size)
    return analysis


def options_from_args(args: argparse.Namespace) -> ModelOptions:
    """The ``ModelOptions`` that the arguments of ``add_model_args`` give (built once per command)."""
    return ModelOptions(input_shapes=parse_input_shapes(args.input_shape), input_name=args.input_name,
                        layout=args.layout, rules=getattr(args, "rules", None) or None,
                        assume_pointwise=getattr(args, "assume_pointwise", False),
                        fill=parse_fills(getattr(args, "fill", [])))


@contextmanager
def stage_display(enabled: bool) -> Iterator[Callable[[str], None]]:
    """A tqdm line naming the running stage with its elapsed time, on stderr; it appears after
    ``SHOW_AFTER_S`` and is ticked by a background thread (one stage can take many seconds)."""
    bar = tqdm(total=len(STAGES), file=sys.stderr, disable=not enabled, leave=False, delay=SHOW_AFTER_S,
               bar_format="rfgraph: {desc} ({n_fmt}/{total_fmt} done) [{elapsed}]")
    done = threading.Event()
    started: list[str] = []

    def on_stage(name: str) -> None:
        bar.set_description_str(name, refresh=False)
        if started:  # the previous stage has ended
            bar.update(1)
        started.append(name)

    def tick() -> None:
        while not done.wait(0.5):
            if bar.format_dict["elapsed"] >= SHOW_AFTER_S:
                bar.refresh()

    ticker = threading.Thread(target=tick, daemon=True) if enabled else None
    if ticker:
        ticker.start()
    try:
        yield on_stage
    finally:
        done.set()
        if ticker:
            ticker.join()
        bar.close()
