"""`rfgraph experiments`: every experiment in --quick mode (one shared run), the robust qualitative
claims of Luo et al. on its CSVs, and the pieces (closed form, slope fits, reference parsing, shape
measures, report without reference data, CLI errors).

Covers: uniform ERF = the multinomial closed form exactly; eq. 11; ERF size grows with depth and
ERF/TRF shrinks; subsampling and dilation enlarge the ERF, dilation's squarer; skip connections
shrink it; dropout keeps its shape; the ViT's field is global and its ERF reaches further than the
CNN's at one block; rfgraph's r of the TF-slim nets; trained-vs-init ran or says why it skipped.
Never the paper's numbers: those are read from ../shared at run time by the code under test.
"""

from __future__ import annotations

import csv
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rfgraph.cli import main
from rfgraph.experiments import EXPERIMENTS
from rfgraph.experiments import reference as reference_mod
from rfgraph.experiments.base import Context, Verdict, numeric_claim
from rfgraph.experiments.closed_form import uniform_erf_1d, uniform_erf_2d, uniform_std
from rfgraph.experiments.fitting import fit_slopes, loglog_slope
from rfgraph.experiments.measure import corner_ratio, excess_kurtosis

VERDICTS = {v.value for v in Verdict}


def rows(out: Path, name: str) -> list[dict[str, str]]:
    """The CSV of one experiment."""
    with (out / name / f"{name}.csv").open() as fh:
        return list(csv.DictReader(fh))


def num(v: str) -> float:
    return float(v) if v not in ("", None) else float("nan")


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    """One --quick run of every experiment through the CLI (shared by the tests below)."""
    out = tmp_path_factory.mktemp("experiments")
    rc = main(["experiments", "--out", str(out), "--quick", "--no-progress"])
    return rc, out


# ------------------------------------------------------------------ the quick run, end to end

def test_every_experiment_runs_and_writes_figures_csv_and_report(quick: tuple[int, Path]) -> None:
    """Exit 0 (no experiment raised); per experiment a PNG, a CSV and a report section with
    verdicts from the fixed set."""
    rc, out = quick
    assert rc == 0
    report = (out / "report.md").read_text()
    for name in EXPERIMENTS:
        pngs = list((out / name).glob("*.png"))
        offline = name == "trained-vs-init" and all(r.get("skipped") for r in rows(out, name))
        assert pngs or offline, name  # offline: no model could be installed, said in the CSV
        assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
        assert rows(out, name), name
        assert f"## {name}:" in report
        for png in pngs:
            assert f"]({name}/{png.name})" in report  # the figure sits in the report
    verdicts = [line.rsplit("|", 2)[-2].strip().strip("*") for line in report.splitlines()
                if line.startswith("| ") and line.rstrip().endswith("** |")]
    assert verdicts and set(verdicts) <= VERDICTS
    assert "error" not in verdicts


def test_uniform_stack_equals_closed_form(quick: tuple[int, Path]) -> None:
    """Sec. 2.1: all-ones kernels give the multinomial coefficients (float32 rounding only), and
    the marginal std is eq. 11's sqrt(n (k^2-1)/12)."""
    uni = [r for r in rows(quick[1], "uniform-random-relu") if r["case"] == "uniform"]
    assert len(uni) >= 2
    for r in uni:
        assert num(r["closed_form_max_rel_err"]) < 1e-5
        eq11 = uniform_std(int(r["n"]), 3)
        assert num(r["marginal_std"]) == pytest.approx(eq11, rel=1e-5)  # CSV: 6 digits


def test_random_linear_second_moment_has_the_uniform_shape(quick: tuple[int, Path]) -> None:
    """Sec. 2.2: with random weights and no nonlinearity, E[g^2] is proportional to the uniform
    closed form (in expectation): the Monte Carlo map correlates with it closely."""
    var = [r for r in rows(quick[1], "uniform-random-relu") if r["case"] == "random E[g^2]"]
    assert var
    assert all(num(r["pearson_vs_closed_form"]) > 0.9 for r in var)
    assert all(num(r["tv_vs_closed_form"]) < 0.25 for r in var)


def test_erf_grows_with_depth_and_ratio_shrinks(quick: tuple[int, Path]) -> None:
    """Fig. 2's robust part: the seed-mean ERF size increases with n and ERF/TRF decreases, for
    random and random+ReLU stacks; the fitted log-log slopes have those signs."""
    data = rows(quick[1], "growth")
    for series in ("random", "relu"):
        pts = [r for r in data if r["series"] == series and r["seed"] != "fit"]
        ns = sorted({int(r["n"]) for r in pts})
        size = [np.mean([num(r["erf_size"]) for r in pts if int(r["n"]) == n]) for n in ns]
        ratio = [np.mean([num(r["erf_trf"]) for r in pts if int(r["n"]) == n]) for n in ns]
        assert len(ns) >= 3
        assert all(a < b for a, b in itertools.pairwise(size)), size
        assert all(a > b for a, b in itertools.pairwise(ratio)), ratio
        fits = {r["n"]: num(r["slope"]) for r in data
                if r["series"] == series and r["seed"] == "fit"}
        assert fits["erf_size"] > 0 > fits["erf_trf"]


def test_subsampling_and_dilation_enlarge_the_erf(quick: tuple[int, Path]) -> None:
    """Sec. 3.1: both variants have a larger ERF than the 15-layer baseline; dilation's is the
    squarest (corner ratio: disc 1, square sqrt 2)."""
    by = {r["variant"]: r for r in rows(quick[1], "subsample-dilation")}
    base = num(by["baseline"]["erf_size"])
    assert num(by["subsample"]["erf_size"]) > base
    assert num(by["dilation"]["erf_size"]) > base
    assert num(by["dilation"]["corner_ratio"]) > num(by["baseline"]["corner_ratio"])


def test_skip_connections_make_the_erf_smaller(quick: tuple[int, Path]) -> None:
    """Sec. 2.5: at equal depth the residual stack's Gaussian sigma is below the plain one's."""
    data = rows(quick[1], "skip-connections")
    deepest = max(int(r["blocks"]) for r in data)
    by = {r["net"]: r for r in data if int(r["blocks"]) == deepest}
    assert num(by["residual"]["gauss_sigma"]) < num(by["plain"]["gauss_sigma"])


def test_dropout_keeps_the_gaussian_shape(quick: tuple[int, Path]) -> None:
    """Sec. 2.5: same weights and inputs with and without dropout: the fitted sigma stays within
    20% and both maps stay well fitted by a Gaussian."""
    by = {r["dropout"]: r for r in rows(quick[1], "dropout")}
    assert num(by["on"]["gauss_sigma"]) / num(by["off"]["gauss_sigma"]) == pytest.approx(1, abs=0.2)
    assert min(num(by["on"]["gauss_r2"]), num(by["off"]["gauss_r2"])) > 0.8


def test_vit_field_is_global_and_its_erf_reaches_past_the_cnn(quick: tuple[int, Path]) -> None:
    """After one block the ViT's TRF is global while the CNN's is local, and the ViT's ERF covers
    a larger share of the input (pixels above 1% of the peak)."""
    by = {(r["net"], r["block"]): r for r in rows(quick[1], "cnn-vs-transformer")}
    assert by[("vit", "1")]["trf"] == "global"
    assert by[("cnn", "1")]["trf"] != "global"
    assert num(by[("vit", "1")]["pixels_above_1pct"]) > num(by[("cnn", "1")]["pixels_above_1pct"])


def test_rf_vs_accuracy_uses_rfgraph_r(quick: tuple[int, Path]) -> None:
    """Every TF-slim net has rfgraph's r; where the reference table is present it is equal."""
    nets = [r for r in rows(quick[1], "rf-vs-accuracy") if not r["model"].startswith("(")]
    assert len(nets) == 12
    assert all(int(r["r_rfgraph"]) > 0 for r in nets)
    published = [r for r in nets if r["r_published"]]
    assert all(r["r_rfgraph"] == r["r_published"] for r in published)


def test_trained_vs_init_measured_or_skipped_with_reason(quick: tuple[int, Path]) -> None:
    """Each shipped model either has trained, init and shuffled rows with a non-empty ERF, or the
    report says why it was skipped (pip install failed)."""
    report = (quick[1] / "report.md").read_text()
    data = [r for r in rows(quick[1], "trained-vs-init") if r["weights"]]
    models = {r["model"] for r in data}
    for m, inputs in {(r["model"], r["inputs"]) for r in data}:
        pair = {r["weights"]: r for r in data if (r["model"], r["inputs"]) == (m, inputs)}
        assert set(pair) == {"trained", "init", "shuffled"}
        assert all(num(r["erf_size"]) > 0 and num(r["r50"]) > 0 for r in pair.values())
        # rfgraph's TRF bounds the ERF: no gradient outside the unit's TRF square
        assert all(num(r["mass_outside_trf"]) < 1e-6 for r in pair.values())
    if len(models) < 3:
        assert "**skipped**" in report and "pip install" in report


def test_resnets_at_init_erf_is_a_fraction_of_the_trf(quick: tuple[int, Path]) -> None:
    """Sec. 3.2 at init: the CIFAR ResNet's field exceeds the 32x32 image but its ERF does not
    fill it; both nets' ERF is a fraction of their TRF."""
    by = {r["net"]: r for r in rows(quick[1], "resnets-at-init")}
    cifar = by["luo_cifar_resnet"]
    assert int(cifar["trf"]) > 32 > num(cifar["erf_size"])
    assert all(0 < num(r["erf_trf"]) < 1 for r in by.values())


def test_gaussianity_collects_every_erf_map(quick: tuple[int, Path]) -> None:
    """The summary has one R^2 per map of the other experiments, each in [-inf, 1]."""
    data = [r for r in rows(quick[1], "gaussianity") if r["case"] != "(median)"]
    exps = {r["experiment"] for r in data}
    assert {"uniform-random-relu", "nonlinearities", "subsample-dilation",
            "cnn-vs-transformer"} <= exps
    assert all(num(r["gauss_r2"]) <= 1 for r in data)
    uniform = [num(r["gauss_r2"]) for r in data if r["case"].startswith("uniform")]
    assert min(uniform) > 0.99  # the closed form is a near-perfect Gaussian


# ------------------------------------------------------------------ pieces

@given(st.integers(0, 12), st.integers(1, 6))
@settings(max_examples=40, deadline=None)
def test_closed_form_is_the_multinomial_expansion(n: int, k: int) -> None:
    """Length n(k-1)+1, total k^n, symmetric, and variance n (k^2-1)/12 (eq. 11)."""
    c = uniform_erf_1d(n, k)
    assert len(c) == n * (k - 1) + 1 and sum(c) == k ** n and c == c[::-1]
    p = np.array(c, float) / sum(c)
    t = np.arange(len(c))
    var = float((p * (t - (p * t).sum()) ** 2).sum())
    assert math.sqrt(var) == pytest.approx(uniform_std(n, k), abs=1e-9)


def test_closed_form_k2_is_binomial_and_2d_is_outer_product() -> None:
    """k=2: C(n, t); the 2-D map is the outer product of the 1-D coefficients."""
    assert uniform_erf_1d(6, 2) == [math.comb(6, t) for t in range(7)]
    two = uniform_erf_2d(3, 3)
    one = np.array(uniform_erf_1d(3, 3), float)
    assert np.array_equal(two, np.outer(one, one))


def test_slope_fit_recovers_a_power_law_and_its_interval() -> None:
    """y = 3 n^0.5 gives slope 0.5 exactly; with noise over seeds the CI covers 0.5."""
    ns = [4, 8, 16, 32, 64]
    assert loglog_slope(ns, [3 * n ** 0.5 for n in ns])[0] == pytest.approx(0.5)
    rng = np.random.default_rng(1)
    ys = np.array([[3 * n ** 0.5 * math.exp(rng.normal(0, 0.05)) for n in ns] for _ in range(8)])
    fit = fit_slopes(ns, ys)
    assert fit.ci[0] < 0.5 < fit.ci[1]
    assert fit.ci[1] - fit.ci[0] < 0.2


def test_shape_measures_tell_disc_from_square_and_gaussian_from_box() -> None:
    """corner_ratio ~1 for a disc, ~sqrt 2 for a square; kurtosis 0 Gaussian vs -1.2 box."""
    yy, xx = np.mgrid[-30:31, -30:31]
    disc = (xx ** 2 + yy ** 2 <= 20 ** 2).astype(float)
    square = ((abs(xx) <= 20) & (abs(yy) <= 20)).astype(float)
    assert corner_ratio(disc) < 1.1 < 1.3 < corner_ratio(square)
    gauss = np.exp(-(xx ** 2 + yy ** 2) / (2 * 6.0 ** 2))
    assert excess_kurtosis(gauss) == pytest.approx(0, abs=0.1)
    assert excess_kurtosis(square) == pytest.approx(-1.2, abs=0.05)


def test_reference_tables_are_parsed_and_numbers_compared(tmp_path: Path) -> None:
    """A claims table and accuracy table in a temporary 'shared' folder are read; a numeric claim
    matches within tolerance and says 'no reference' without the table."""
    (tmp_path / "reference").mkdir()
    (tmp_path / "seeds").mkdir()
    (tmp_path / "reference" / "luo2016_claims.md").write_text(
        "| claim | value in the paper | where |\n|---|---|---|\n"
        "| slope of something | 0.7 (theory 1) | x |\n")
    (tmp_path / "seeds" / "araujo2019_x.txt").write_text(
        "ID\tReceptive field size (pixels)\tImageNet top-1 accuracy\tFamily\tFLOPS\n"
        "net_a\t1,000\t0.5\ta\t1\n")
    ref = reference_mod.load(tmp_path)
    assert ref.numbers("slope of") == [0.7, 1.0] and ref.accuracy == {"net_a": 0.5}
    ctx = Context(tmp_path, reference=ref)
    assert numeric_claim(ctx, "slope of", "s", 0.75, 0.1).verdict is Verdict.MATCH
    assert numeric_claim(ctx, "slope of", "s", 0.95, 0.1).verdict is Verdict.DIFFER
    empty = Context(tmp_path, reference=reference_mod.load(tmp_path / "nothing"))
    assert numeric_claim(empty, "slope of", "s", 0.75, 0.1).verdict is Verdict.NO_REFERENCE


def test_report_without_reference_says_values_are_missing(tmp_path: Path) -> None:
    """--reference to an empty folder: the run still works and the report says what is missing."""
    out = tmp_path / "out"
    rc = main(["experiments", "rf-vs-accuracy", "--out", str(out), "--reference",
               str(tmp_path / "empty"), "--no-progress"])
    assert rc == 0
    text = (out / "report.md").read_text()
    assert "No reference data found" in text and "no reference" in text
    assert all(r["r_published"] == "" for r in rows(out, "rf-vs-accuracy"))


def test_cli_lists_and_rejects_bad_arguments(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    """--list names every experiment; an unknown name or --runs 0 is exit code 2."""
    assert main(["experiments", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in EXPERIMENTS)
    assert main(["experiments", "no-such", "--out", str(tmp_path)]) == 2
    assert main(["experiments", "growth", "--runs", "0", "--out", str(tmp_path)]) == 2


def test_he_init_redraws_constant_node_weights_and_resets_batchnorm() -> None:
    """Paddle-style graphs keep conv weights in Constant nodes: he_init still redraws them, and
    BatchNormalization becomes the identity (scale 1, bias 0, mean 0, var 1)."""
    import onnx
    from onnx import helper, numpy_helper

    from model_zoo.builder import GraphBuilder
    from rfgraph.experiments.trained_vs_init import constants_to_initializers, he_init

    b = GraphBuilder("t", (1, 2, 8, 8), seed=0)
    b.output(b.batchnorm(b.conv(b.input, 4, 3, 1, 1, bias=False), name="y"))
    model = b.build()
    w = next(i for i in model.graph.initializer if i.dims[:] == [4, 2, 3, 3])
    const = helper.make_node("Constant", [], [w.name], value=w)  # weights as a Constant node
    model.graph.node.insert(0, const)
    model.graph.initializer.remove(w)
    out = he_init(model, np.random.default_rng(0))
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    assert not np.array_equal(inits[w.name], numpy_helper.to_array(w))
    bn = next(n for n in out.graph.node if n.op_type == "BatchNormalization")
    for name, value in zip(bn.input[1:], (1.0, 0.0, 0.0, 1.0)):
        assert np.all(inits[name] == value)
    assert not any(n.op_type == "Constant" for n in constants_to_initializers(model).graph.node)
    onnx.checker.check_model(out)


def test_quiet_silences_progress_bars_on_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the experiments show tqdm bars; -q (like every command) turns them off
    (it was ignored here).  The terminal is simulated: stderr claims to be a TTY."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    args = ["experiments", "rf-vs-accuracy", "--out", str(tmp_path / "a"), "--quick"]
    assert main(args) == 0
    assert "rf-vs-accuracy" in capsys.readouterr().err  # the bar's label
    assert main(["-q", *args]) == 0
    assert capsys.readouterr().err == ""


def test_a_claim_compared_with_a_later_number_shows_that_number(tmp_path: Path) -> None:
    """The ReLU slope is compared with the theory's 0.5 (the row's second number), but its paper
    column printed the row's first number, "0.56 (theory 0.5)"; it now leads with 0.5."""
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "luo2016_claims.md").write_text(
        "| claim | value in the paper | where |\n|---|---|---|\n"
        "| slope of something | 0.56 (theory 0.5) | x |\n")
    ctx = Context(tmp_path, reference=reference_mod.load(tmp_path))
    c = numeric_claim(ctx, "slope of", "s", 0.52, 0.03, index=1)
    assert c.verdict is Verdict.MATCH and c.paper.startswith("0.5 ")  # |0.52 - 0.5| <= 0.03
    assert numeric_claim(ctx, "slope of", "s", 0.52, 0.03).paper == "0.56 (theory 0.5)"
