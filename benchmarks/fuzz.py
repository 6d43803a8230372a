"""Structural fuzz of the CLI (issue 15 §4): the onnx wheel's backend-test models, mutated (nodes
dropped or duplicated, inputs swapped, attributes and dimensions set to random values, opset
changed, bytes truncated), each run through ``analyze``, ``diagnose`` and ``erf`` in a worker
process with a time cap.  A case fails when it exits 3, prints a traceback or a stray stderr line
(anything not starting with ``rfgraph:``, such as a numpy warning), or runs past the cap.

    python benchmarks/fuzz.py --cases 3000            # thousands on demand; prints the counts
    python benchmarks/fuzz.py --cases 200 --show 20   # and the first failing cases

tests/test_fuzz_mutants.py runs a few hundred of the same cases in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import multiprocessing as mp
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

COMMANDS = {"analyze": ["analyze"], "diagnose": ["diagnose", "--no-size-range"],
            "erf": ["erf", "--runs", "1", "--no-progress"]}
SEED_FOLDERS = ("pytorch-converted", "pytorch-operator", "simple")  # small models: erf runs fast
INTS = (-(2 ** 31), -5, -1, 0, 1, 2, 3, 7, 2 ** 40)
DIMS = (0, 1, 2, 3, 5, 17, -1)


def seed_models(folders: Sequence[str] = SEED_FOLDERS) -> list[tuple[str, bytes]]:
    """(name, bytes) of the backend-test models shipped in the onnx wheel (sorted, stable)."""
    root = Path(onnx.__file__).parent / "backend" / "test" / "data"
    found = []
    for folder in folders:
        found += sorted((root / folder).glob("*/model.onnx")) + sorted((root / folder).glob("*.onnx"))
    return [(f"{p.parent.name}/{p.name}" if p.name == "model.onnx" else p.name, p.read_bytes())
            for p in found if p.stat().st_size < 2_000_000]


def _nodes_with_attributes(m: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in m.graph.node if any(a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS)
                                           for a in n.attribute)]


def drop_node(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    if m.graph.node:
        del m.graph.node[int(rng.integers(len(m.graph.node)))]


def duplicate_node(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    if m.graph.node:
        m.graph.node.insert(int(rng.integers(len(m.graph.node) + 1)),
                            copy.deepcopy(m.graph.node[int(rng.integers(len(m.graph.node)))]))


def swap_inputs(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    """Two inputs of a node exchanged, or one replaced by another tensor of the graph."""
    nodes = list(m.graph.node)
    if not nodes:
        return
    node = nodes[int(rng.integers(len(nodes)))]
    if len(node.input) >= 2 and rng.random() < 0.5:
        i, j = rng.choice(len(node.input), 2, replace=False)
        node.input[int(i)], node.input[int(j)] = node.input[int(j)], node.input[int(i)]
    elif node.input:
        names = [t for n in nodes for t in n.output] + [i.name for i in m.graph.input]
        node.input[int(rng.integers(len(node.input)))] = names[int(rng.integers(len(names)))]


def random_attribute(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    """An INT or INTS attribute set to a random (often invalid) value or length."""
    nodes = _nodes_with_attributes(m)
    if not nodes:
        return
    node = nodes[int(rng.integers(len(nodes)))]
    attrs = [a for a in node.attribute if a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS)]
    attr = attrs[int(rng.integers(len(attrs)))]
    if attr.type == onnx.AttributeProto.INT:
        attr.i = int(rng.choice(INTS))
    else:
        del attr.ints[:]
        attr.ints.extend(int(rng.choice(INTS)) for _ in range(int(rng.integers(0, 6))))


def wrong_dims(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    """A dimension of a graph input or output changed, or removed."""
    values = list(m.graph.input) + list(m.graph.output)
    dims = [(v, d) for v in values for d in v.type.tensor_type.shape.dim]
    if not dims:
        return
    vi, dim = dims[int(rng.integers(len(dims)))]
    value = int(rng.choice(DIMS))
    if value < 0:
        del vi.type.tensor_type.shape.dim[-1]
    else:
        dim.dim_value = value


def change_opset(m: onnx.ModelProto, rng: np.random.Generator) -> None:
    for imp in m.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = int(rng.choice((1, 6, 7, 9, 11, 13, 18, 99)))


MUTATIONS: tuple[Callable[[onnx.ModelProto, np.random.Generator], None], ...] = (
    drop_node, duplicate_node, swap_inputs, random_attribute, wrong_dims, change_opset)


def mutant(data: bytes, rng: np.random.Generator) -> bytes:
    """1-3 structural mutations, then (one case in ten) a truncation of the bytes."""
    m = onnx.load_from_string(data)
    for _ in range(int(rng.integers(1, 4))):
        MUTATIONS[int(rng.integers(len(MUTATIONS)))](m, rng)
    out = m.SerializeToString()
    if rng.random() < 0.1:
        out = out[:int(rng.integers(len(out)))]
    return out


@dataclass(frozen=True)
class Case:
    name: str
    command: str
    path: str


def cases(count: int, folder: Path, seed: int = 0,
          folders: Sequence[str] = SEED_FOLDERS) -> Iterator[Case]:
    """``count`` mutants written under ``folder``, each with every command (deterministic)."""
    seeds = seed_models(folders)
    rng = np.random.default_rng(seed)
    for k in range(count):
        name, data = seeds[k % len(seeds)]
        path = folder / f"m{k}.onnx"
        path.write_bytes(mutant(data, rng))
        for command in COMMANDS:
            yield Case(f"#{k} {name}", command, str(path))


def run_case(case: Case) -> tuple[int, list[str]]:
    """Run one command in this process: its exit code and every stderr line, from Python and
    from native code (fd 2) alike."""
    from rfgraph.cli import main

    err = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as native, _fd2_to(native.fileno()), \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main([*COMMANDS[case.command], case.path])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        native.seek(0)
        text = err.getvalue() + native.read().decode("utf-8", "replace")
    return int(code), [ln for ln in text.splitlines() if ln.strip()]


@contextlib.contextmanager
def _fd2_to(fd: int) -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(fd, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def verdict(code: int, lines: list[str]) -> str | None:
    """None when the outcome is clean, else what is wrong with it."""
    if code not in (0, 1, 2):
        return f"exit {code}: {lines[-1][:200] if lines else ''}"
    stray = [ln for ln in lines if not ln.startswith("rfgraph:")]
    if stray:
        return f"stray stderr: {stray[0][:160]}"
    if code == 2 and len(lines) != 1:
        return f"exit 2 with {len(lines)} stderr lines"
    return None


def _init_worker() -> None:
    import warnings

    warnings.simplefilter("default")  # as a user's run: a warning is a stray stderr line


def fuzz(count: int, seed: int = 0, cap_s: float = 30.0, workers: int = 2,
         progress: Callable[[int], None] | None = None, keep: Path | None = None,
         folders: Sequence[str] = SEED_FOLDERS) -> tuple[Counter[str], list[tuple[Case, str]]]:
    """Run ``count`` mutants x the three commands; counts per (command, outcome) and the failures."""
    counts: Counter[str] = Counter()
    failures: list[tuple[Case, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
        todo = list(cases(count, keep or Path(tmp), seed, folders))
        done = 0
        while done < len(todo):  # a fresh pool after a case that hangs (its worker is stuck)
            done = _run_batch(todo, done, cap_s, workers, counts, failures, progress)
    return counts, failures


def _run_batch(todo: list[Case], start: int, cap_s: float, workers: int, counts: Counter[str],
               failures: list[tuple[Case, str]], progress: Callable[[int], None] | None) -> int:
    """Run ``todo[start:]`` until the end or the first hang; returns where to restart."""
    pool = mp.get_context("fork").Pool(workers, initializer=_init_worker, maxtasksperchild=50)
    try:
        pending = [(c, pool.apply_async(run_case, (c,))) for c in todo[start:]]
        for i, (case, job) in enumerate(pending, start):
            try:
                code, lines = job.get(timeout=cap_s)
            except mp.TimeoutError:
                counts[f"{case.command} hang"] += 1
                failures.append((case, f"no result within {cap_s:g} s"))
                return i + 1
            counts[f"{case.command} exit {code}"] += 1
            problem = verdict(code, lines)
            if problem:
                counts[f"{case.command} FAIL"] += 1
                failures.append((case, problem))
            if progress:
                progress(i)
        return len(todo)
    finally:
        pool.terminate()
        pool.join()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=1000, help="mutants (each run by 3 commands)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cap", type=float, default=30.0, help="seconds per command")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--show", type=int, default=10, help="failing cases printed")
    p.add_argument("--keep", type=Path, metavar="DIR", help="write the mutants here (kept)")
    p.add_argument("--folders", default=",".join(SEED_FOLDERS),
                   help="backend-test data folders to mutate (add 'light' for the bigger CNNs)")
    args = p.parse_args(argv)
    counts, failures = fuzz(args.cases, args.seed, args.cap, args.workers, keep=args.keep,
                            folders=args.folders.split(","))
    for key in sorted(counts):
        print(f"{key:24s} {counts[key]}")
    print(f"failures: {len(failures)} of {3 * args.cases} runs")
    for case, problem in failures[:args.show]:
        print(f"  {case.command} {case.name} ({case.path}): {problem}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
