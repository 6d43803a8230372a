"""Luo et al. sec. 4.1's new initialisation (``--reinit periphery[:S]`` and ``corners``) and the
new-init experiment's closed form (Eq. 10).

Oracles: the n-fold convolution of the taps' variance shares computed by scipy (independent of
the closed form's marginal formula), the empirical variance of many drawn weights per tap, and the
measured E[g^2] of a linear stack through the gradient graph. Each failed before (no such init).
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from scipy.signal import convolve2d

import model_zoo
from rfgraph import compute_erf
from rfgraph import erf_conventions as ec
from rfgraph.cli import main
from rfgraph.errors import RFGraphError
from rfgraph.experiments.new_init import closed_form_variance, map_variance
from rfgraph.inputs import Reinit, WeightInit, reinitialise, tap_variances


@pytest.mark.parametrize("spec", ["he", "periphery", "periphery:0.5", "periphery:10", "corners"])
@pytest.mark.parametrize("kernel", [(3, 3), (5, 5), (3, 5), (7,), (3, 3, 3)])
def test_tap_variances_keep_he_total_and_grow_outward(spec: str, kernel: tuple[int, ...]) -> None:
    share = tap_variances(kernel, WeightInit.parse(spec))
    assert share.shape == kernel and share.mean() == pytest.approx(1.0)
    centre = tuple(k // 2 for k in kernel)
    corner = tuple(0 for _ in kernel)
    if spec == "he":
        assert np.allclose(share, 1.0)
    elif spec == "corners":
        assert share[corner] > 0 and (share > 0).sum() == 2 ** len(kernel)
        if all(k > 1 for k in kernel):
            assert share[centre] == 0
    else:
        assert share[corner] > share[centre]  # periphery: outside larger than the centre


def test_periphery_zero_is_he_and_parse_refuses_nonsense() -> None:
    assert np.allclose(tap_variances((3, 3), WeightInit.parse("periphery:0")), 1.0)
    assert WeightInit.parse("periphery") == WeightInit(Reinit.PERIPHERY, 4.0)
    for bad in ("periphery:-1", "periphery:nan", "periphery:x", "he:2", "sideways"):
        with pytest.raises(RFGraphError):
            WeightInit.parse(bad)


def conv_model(out_ch: int = 256, in_ch: int = 64, k: int = 3):
    w = numpy_helper.from_array(np.zeros((out_ch, in_ch, k, k), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, in_ch, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "c", [x], [y], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("spec", ["periphery:4", "corners", "he"])
def test_drawn_weights_have_the_tap_variances_and_he_total(spec: str) -> None:
    """256x64 draws per tap: the empirical variance of each tap is He's 2/fan_in times its share."""
    model = reinitialise(conv_model(), spec, np.random.default_rng(0))
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    fan_in = 64 * 9
    empirical = (w ** 2).mean(axis=(0, 1)) / (2.0 / fan_in)
    assert np.allclose(empirical, tap_variances((3, 3), WeightInit.parse(spec)), atol=0.04)


@pytest.mark.parametrize("spec", ["he", "periphery:1", "periphery:4", "corners"])
@pytest.mark.parametrize("n", [1, 3, 7])
def test_eq10_closed_form_equals_the_convolved_variance_image(spec: str, n: int) -> None:
    """The variance image of a linear stack is the n-fold convolution of the shares (sec. 2.2):
    its per-axis variance, computed by brute force, equals the closed form n Var[X]."""
    share = tap_variances((3, 3), WeightInit.parse(spec))
    image = np.ones((1, 1))
    for _ in range(n):
        image = convolve2d(image, share)
    assert map_variance(image) == pytest.approx(closed_form_variance(n, spec), rel=1e-9)


@pytest.mark.parametrize("spec", ["he", "periphery:4", "corners"])
def test_measured_squared_gradient_of_a_linear_stack_matches_eq10(spec: str) -> None:
    """E[g^2] over 150 weight draws of a 6-layer, 8-channel linear stack, through the gradient
    graph: its variance is Eq. 10's within sampling noise, and periphery/corners widen it."""
    model = model_zoo.build("luo_conv_random_6:channels=8")
    res = compute_erf(model, runs=1, weight_runs=150, reinit=spec, batch=1, seed=3,
                      conventions=ec.ERFConventions(aggregation=ec.Aggregation.SQUARE, runs=1))
    assert map_variance(res.erf) == pytest.approx(closed_form_variance(6, spec), rel=0.08)


def test_cli_reinit_periphery_runs_and_bad_spec_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["erf", "zoo:luo_conv_random_5", "--reinit", "periphery:2", "--weight-runs", "2",
                 "--runs", "1", "-q"]) == 0
    capsys.readouterr()
    assert main(["erf", "zoo:luo_conv_random_5", "--reinit", "periphery:-3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "periphery" in err[0], err


def test_new_init_experiment_quick(tmp_path) -> None:
    """The experiment end to end: every linear row within tolerance of Eq. 10, corners the widest."""
    assert main(["experiments", "new-init", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    with open(tmp_path / "new-init" / "new-init.csv") as fh:
        rows = list(csv.DictReader(fh))
    linear = [r for r in rows if r["net"] == "linear"]
    assert linear and all(abs(float(r["measured_over_eq10"]) - 1) < 0.15 for r in linear)
    for n in {r["n"] for r in linear}:
        by = {r["init"]: float(r["sigma_over_he"]) for r in linear if r["n"] == n}
        assert by["he"] == 1.0 and by["corners"] > by["periphery:4"] > by["periphery:1"] > 1.0
    report = (tmp_path / "report.md").read_text()
    assert "new-init" in report and "**differ**" not in report
