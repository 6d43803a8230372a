"""The one module that talks to onnxruntime: session options, sessions (providers, threads,
config entries) and running a model on zeros.  Every other rfgraph module goes through it
(``tests/test_runtime.py`` checks that no other module imports onnxruntime).

onnxruntime is imported on first use, not at ``import rfgraph`` (the TRF needs no session).
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import nullcontext as _no_redirect
from contextlib import redirect_stdout
from typing import Any

import numpy as np
import onnx
from onnx import helper

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def _ort() -> Any:
    """The onnxruntime module (imported here only)."""
    import onnxruntime

    return onnxruntime


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build has."""
    return list(_ort().get_available_providers())


def has_cuda() -> bool:
    """Whether onnxruntime can run on CUDA here."""
    return CUDA in available_providers()


def best_providers() -> list[str]:
    """CUDA then CPU, of those present: the default for gradient graphs."""
    available = available_providers()
    return [p for p in (CUDA, CPU) if p in available]


def session_options(optimize: bool = True, threads: int = 0,
                    config: Mapping[str, str] | None = None, lean: bool = False) -> Any:
    """onnxruntime options for every rfgraph session: graph optimisation ALL (or none), and no
    log of its own (its warnings, e.g. about the unused initializers exporters leave, and the
    errors of trial runs that rfgraph expects and handles, went to the user's terminal; every
    real failure surfaces as an exception, which rfgraph reports in one line); ``threads``
    intra-op threads (0: onnxruntime's default) and extra session ``config`` entries; ``lean``:
    no memory pattern, and the process's lean arena (``_register_lean_arena``)."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        opts.intra_op_num_threads = threads
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, value)
    if lean:
        _register_lean_arena()
        opts.enable_mem_pattern = False
        opts.add_session_config_entry("session.use_env_allocators", "1")
    return opts


def release_free_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the system (glibc's
    ``malloc_trim``; a no-op elsewhere): large protobufs freed between a check and the run (a
    whole-graph gradient session, the models a cut is planned with) otherwise stay in the
    process's resident memory (about 300 MB on ResNet-50)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


_LEAN_ARENA: list[bool] = []  # registered in this process


def _register_lean_arena() -> None:
    """Register, once per process, the CPU arena that lean sessions share: it grows by what a run
    requests (onnxruntime's default doubles its last extension, and with the memory pattern a
    second run reserved a second block the size of all activations: +42 MB on ResNet-50's
    gradient graph; without any arena, ViT-S's ran 10% slower, measured)."""
    if _LEAN_ARENA:
        return
    ort = _ort()
    cpu = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    same_as_requested = 1  # arena_extend_strategy kSameAsRequested; 0 and -1: onnxruntime's defaults
    ort.create_and_register_allocator(cpu, ort.OrtArenaCfg(0, same_as_requested, -1, -1))
    _LEAN_ARENA.append(True)


def session(model: onnx.ModelProto, providers: Sequence[str] = (CPU,), optimize: bool = True,
            threads: int = 0, config: Mapping[str, str] | None = None, quiet: bool = False,
            lean: bool = False) -> Any:
    """An onnxruntime session of ``model`` on ``providers`` (CPU by default); ``quiet`` swallows
    what onnxruntime prints itself on some load failures ("EP Error").

    ``lean`` keeps the peak memory down for big graphs run many times (gradient graphs): the model
    reaches onnxruntime through a temporary file, so its serialized bytes are not alive while
    onnxruntime builds its own copy, and activations come from an arena that grows by what is
    requested, without the memory pattern (``session_options``); same speed, measured on ResNet-50
    and ViT-S.
    """
    opts = session_options(optimize, threads, config, lean)
    with redirect_stdout(io.StringIO()) if quiet else _no_redirect():
        if not lean:
            return _ort().InferenceSession(model.SerializeToString(), opts, providers=list(providers))
        with tempfile.TemporaryDirectory(prefix="rfgraph_") as tmp:
            path = f"{tmp}/model.onnx"
            onnx.save_model(model, path)
            return _ort().InferenceSession(path, opts, providers=list(providers))


def zero_feeds(sess: Any, dtypes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """All-zero inputs for ``sess`` (unknown dims taken as 1; element type from ``dtypes``,
    float by default)."""
    return {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape],
                             helper.tensor_dtype_to_np_dtype(dtypes.get(i.name, onnx.TensorProto.FLOAT)))
            for i in sess.get_inputs()}


def run_on_zeros(sess: Any, names: Sequence[str], dtypes: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """Shapes of ``names`` from one run of ``sess`` on all-zero inputs (unknown dims taken as 1)."""
    values = sess.run(list(names), zero_feeds(sess, dtypes))
    return {n: tuple(np.shape(v)) for n, v in zip(names, values)}
