"""The receptive_field library's rf_benchmark table (19 TF-slim configurations) reproduced by rfgraph.

Oracles: the published table (tests/data/grf_rf_benchmark.csv, copied from the library's
RECEPTIVE_FIELD_TABLE.md; its header names the commit), and onnxruntime perturbation: with
positive weights and zero biases a unit's value is a sum of positive path products, so it is
> 0 exactly when a perturbed input row (column) reaches it.

Covers: every published row at 224 and 321 (r, S, P on both axes) on the model_zoo graphs, and
that each configuration has exactly the published end points; the rows at unknown resolution
('None'): r and S (size-free), P where published, and rfgraph's size-dependence flag exactly where
the library prints P = None; the analysis of a graph with dynamic spatial dims (issue 14 §2): r
and S, and P per residue of the size against the published rows at 224 and 321; `rfgraph table
--models grf --size 224 321 --endpoints` against the published CSV; the measured support of
every unit of new nets (resnet_v2_50, inception_resnet_v2-same, inception_v2-no-separable-conv,
vgg_a) against rfgraph's regions, and the r, S, P measured at sizes congruent to 224 and 321
(mod 32) against the published rows.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import model_zoo
import rfgraph
from rfgraph.cli import main

DATA = Path(__file__).resolve().parent / "data" / "grf_rf_benchmark.csv"
TINY = "width=0.05"  # 1-25 channels per layer: structure is what decides r, S, P
SIZES = (224, 321)

Triple = tuple[int, int, int | None]


def _published() -> dict[tuple[str, str | None], dict[str, Triple]]:
    """(model, resolution or None) -> {end point: (r, S, P)} in table order, read independently
    of rfgraph's reference loader."""
    lines = [ln for ln in DATA.read_text().splitlines() if ln and not ln.startswith("#")]
    table: dict[tuple[str, str | None], dict[str, Triple]] = defaultdict(dict)
    for rec in csv.DictReader(lines):
        res = None if rec["resolution"] == "None" else rec["resolution"]
        P = None if rec["P"] == "None" else int(rec["P"])
        table[(rec["model"], res)][rec["end_point"]] = (int(rec["r"]), int(rec["S"]), P)
    return dict(table)


PUBLISHED = _published()


@cache
def analysed(name: str, size: int, same_mode: str = "explicit"
             ) -> tuple[list[str], rfgraph.Analysis]:
    """End points and analysis of a zoo configuration built at ``size``."""
    model = model_zoo.build(f"{name}:size={size},same_mode={same_mode},{TINY}")
    return model_zoo.endpoints(model), rfgraph.analyze(model)


def rsp(analysis: rfgraph.Analysis, tensor: str) -> Triple:
    """(r, S, P) of a tensor, asserting both spatial axes agree."""
    ep = analysis[tensor]
    assert len(set(zip(ep.r, ep.S, ep.P))) == 1, (tensor, ep.r, ep.S, ep.P)
    return ep.r[0], ep.S[0], ep.P[0]  # type: ignore[return-value]


def test_data_covers_the_nineteen_configurations():
    """The CSV holds each of the 19 rf_benchmark configurations at None, 224 and 321, with the
    same end points at each resolution (561 rows), and the zoo lists the same 19 names."""
    assert set(PUBLISHED) == {(m, r) for m in model_zoo.GRF_BENCHMARK for r in (None, "224", "321")}
    for name in model_zoo.GRF_BENCHMARK:
        assert list(PUBLISHED[(name, None)]) == list(PUBLISHED[(name, "224")]) == \
            list(PUBLISHED[(name, "321")])
    assert sum(len(v) for v in PUBLISHED.values()) == 561


# ---------------------------------------------------------------- 224 and 321
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", model_zoo.GRF_BENCHMARK)
def test_every_published_row_reproduced(name, size):
    """All end points of the configuration, in the table's order, with the published r, S, P."""
    eps, analysis = analysed(name, size)
    expected = PUBLISHED[(name, str(size))]
    assert eps == list(expected)
    assert {ep: rsp(analysis, ep) for ep in eps} == expected


# ---------------------------------------------------------------- unknown resolution ('None')
@pytest.mark.parametrize("name", model_zoo.GRF_BENCHMARK)
def test_none_rows_r_S_and_size_independent_P(name):
    """At unknown resolution the library gives r and S (they do not depend on the size) and P
    only where no padding depends on the size: ours are the same at 224 and at 321."""
    for size in SIZES:
        _, analysis = analysed(name, size)
        for ep, (r, S, P) in PUBLISHED[(name, None)].items():
            ours = rsp(analysis, ep)
            assert ours[:2] == (r, S), (ep, size)
            if P is not None:
                assert ours[2] == P, (ep, size)


@pytest.mark.parametrize("name", model_zoo.GRF_BENCHMARK)
def test_size_dependence_flag_where_library_prints_P_none(name):
    """Written with auto_pad=SAME_UPPER (tf2onnx without static shapes), rfgraph flags an end
    point's padding as size dependent exactly where the library's 'None' row has P = None."""
    eps, analysis = analysed(name, 224, "auto_pad")
    flagged = {ep: bool(analysis[ep].size_dependent) for ep in eps}
    assert flagged == {ep: P is None for ep, (_, _, P) in PUBLISHED[(name, None)].items()}


def dynamic_size_model(name: str) -> onnx.ModelProto:
    """The configuration as tf2onnx writes it for an input of unknown height and width."""
    model = model_zoo.build(f"{name}:same_mode=auto_pad,{TINY}")
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "H", "W"
    return model


@pytest.mark.parametrize("name", ["vgg_a", "inception_v2-no-separable-conv", "resnet_v2_50",
                                  "inception_resnet_v2-same"])
def test_none_rows_from_a_graph_of_unknown_size(name):
    """The 'None' rows from the graph itself, without a size: r and S exact, P where the library
    gives it, and the size-dependence flagged where it prints None."""
    analysis = rfgraph.analyze(dynamic_size_model(name))
    for ep, (r, S, P) in PUBLISHED[(name, None)].items():
        assert analysis[ep].r == (r, r) and analysis[ep].S == (S, S)
        if P is None:
            assert analysis[ep].size_dependent
        else:
            assert analysis[ep].P == (P, P)


@pytest.mark.parametrize("name", model_zoo.GRF_BENCHMARK)
def test_P_by_residue_of_an_unknown_size_gives_the_published_rows(name):
    """Every configuration, as a graph of unknown size: r and S as published, and P at the
    residues of 224 and 321 is the published P at 224 and at 321 (one number where the library
    gives P at unknown resolution, a set of values where it prints None)."""
    analysis = rfgraph.analyze(dynamic_size_model(name))
    assert analysis.unknown_size is not None
    for ep, (r, S, P) in PUBLISHED[(name, None)].items():
        got = analysis[ep]
        assert got.r == (r, r) and got.S == (S, S), ep
        for size in SIZES:
            want = PUBLISHED[(name, str(size))][ep][2]
            assert [p if isinstance(p, int) else p.by_residue[size % p.period] for p in got.P] == [want] * 2, \
                (ep, size)
        assert all(isinstance(p, int) for p in got.P) == (P is not None), ep


# ---------------------------------------------------------------- the CLI
def test_table_command_reproduces_the_benchmark(capsys):
    """`rfgraph table --models grf --endpoints --size 224 321` against the published CSV: one row
    per published row at 224 and 321, every one a match; exit 0 with --fail-on-differ."""
    code = main(["table", "--models", "grf", "--endpoints", "--size", "224", "321", "--format",
                 "json", "--reference", str(DATA), "--fail-on-differ"])
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert code == 0
    assert len(rows) == sum(len(v) for (_, res), v in PUBLISHED.items() if res is not None)
    assert [r for r in rows if r["verdict"] != "match"] == []
    seen = {(r["model"].split(":")[0], r["input_size"][0]) for r in rows}
    assert seen == {(m, s) for m in model_zoo.GRF_BENCHMARK for s in SIZES}


def test_table_size_option_keeps_names_and_refuses_a_clash(capsys):
    """--size appends size=N to each name (after other parameters); a name that sets its own
    size, or a size < 1, is a usage error (exit 2)."""
    code = main(["table", "--models", "vgg_a:width=0.05", "--size", "321", "--format", "json",
                 "--no-reference"])
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert code == 0 and row["model"] == "vgg_a:width=0.05,size=321" and row["input_size"] == [321, 321]
    assert main(["table", "--models", "vgg_a:size=224", "--size", "321"]) == 2
    assert "sets its size" in capsys.readouterr().err
    assert main(["table", "--models", "vgg_a", "--size", "0"]) == 2


def test_unknown_resolution_rows_apply_to_any_size(capsys, tmp_path):
    """A reference row at resolution None (the library's unknown size) is compared at any size,
    only on the quantities it gives (P = None: r and S)."""
    rows = [ln for ln in DATA.read_text().splitlines()
            if ln.startswith(("model,", "resnet_v2_50,resnet_v2_50/block4,None"))]
    ref = tmp_path / "none.csv"
    ref.write_text("\n".join(rows) + "\n")
    code = main(["table", "--models", "resnet_v2_50:width=0.05", "--size", "97", "--format",
                 "json", "--reference", str(ref)])
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert code == 0 and row["verdict"] == "match" and row["published"] == [483, 32, None]


# ---------------------------------------------------------------- perturbation oracle
def positive_model(name: str, size: int, end_point: str) -> onnx.ModelProto:
    """The zoo graph up to ``end_point``: conv weights 1/fan_in (positive, zero biases), any batch."""
    model = model_zoo.build(f"{name}:size={size},{TINY}")
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = numpy_helper.to_array(inits[node.input[1]])
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(
                np.full(w.shape, 1.0 / np.prod(w.shape[1:]), np.float32), node.input[1]))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(end_point, TensorProto.FLOAT, None))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    return onnx.utils.Extractor(model).extract_model([model.graph.input[0].name], [end_point])


def measured_support(name: str, size: int, end_point: str, axis: int) -> np.ndarray:
    """(units, 2): first and last input index along ``axis`` (0 rows, 1 columns) whose
    perturbation (the whole row/column set to 1 on a zero image) changes each output unit."""
    sess = ort.InferenceSession(positive_model(name, size, end_point).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    reached = []
    for start in range(0, size, 64):
        lines = range(start, min(start + 64, size))
        batch = np.zeros((len(lines), 3, size, size), np.float32)
        for k, i in enumerate(lines):
            if axis == 0:
                batch[k, :, i, :] = 1.0
            else:
                batch[k, :, :, i] = 1.0
        out = sess.run(None, {"input_image": batch})[0].sum(axis=1)  # (lines, Hout, Wout)
        reached.append(np.moveaxis(out, 1 + axis, 1)[:, :, 0] > 0)      # unit along axis, 0 across
    hit = np.concatenate(reached)                                       # (input lines, units)
    assert hit.any(axis=0).all(), "a unit reached by no input line"
    first = hit.argmax(axis=0)
    last = size - 1 - hit[::-1].argmax(axis=0)
    assert all(hit[a:b + 1, u].all() for u, (a, b) in enumerate(zip(first, last)))  # no holes
    return np.stack([first, last], axis=1)


ORACLE_CASES = [("resnet_v2_50", "resnet_v2_50/block1"), ("resnet_v2_50", "resnet_v2_50/block2"),
                ("inception_resnet_v2-same", "MaxPool_5a_3x3"),
                ("inception_resnet_v2-same", "Mixed_5b"),
                ("inception_v2-no-separable-conv", "Mixed_3c"), ("vgg_a", "vgg_a/pool4")]


@pytest.mark.parametrize("size,published_size", [(128, 224), (129, 321)])
@pytest.mark.parametrize("name,end_point", ORACLE_CASES)
def test_perturbation_support_matches_regions(name, end_point, size, published_size):
    """Every unit's measured support along both axes equals rfgraph's region clipped to the
    image; r, S, P read off the measured support of interior units equal the published row at
    the size with the same residue mod 32 (which fixes every TF 'SAME' begin padding)."""
    assert size % 32 == published_size % 32
    _, analysis = analysed(name, size)
    ep = analysis[end_point]
    for axis in (0, 1):
        got = measured_support(name, size, end_point, axis)
        assert (got == np.clip(ep.regions(axis), 0, size - 1)).all(), axis
        assert measured_rsp(got, size) == PUBLISHED[(name, str(published_size))][end_point]


def measured_rsp(support: np.ndarray, size: int) -> Triple:
    """r, S, P from measured supports: r of a unit clipped on neither side, S between the
    unclipped starts of two neighbours, P = u*S - start (Araujo eq. 5, start = u*S - P)."""
    free = [u for u in range(len(support)) if support[u, 0] > 0]
    whole = [u for u in free if support[u, 1] < size - 1]
    assert whole and len(free) >= 2 and free[1] == free[0] + 1
    u = whole[0]
    S = int(support[free[1], 0] - support[free[0], 0])
    return int(support[u, 1] - support[u, 0] + 1), S, int(u * S - support[u, 0])
