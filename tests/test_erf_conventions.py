"""ERF conventions: each option against an independent definition, and the two presets against
the papers' own procedures written out in torch.

Cases: seed weights = gradient of the scalar (central differences); aggregation per element
then channel sum; the ``replknet`` preset reproduces RepLKNet's get_input_grad + AverageMeter
(ReLU of the centre unit at n//2 summed over channels, ReLU of the gradient summed over batch and
channels, NaN samples skipped) on an even-sized output where n//2 != (n-1)//2; the ``luo`` preset
reproduces a unit gradient at the centre of every channel, |grad| summed over channels; display
scalings; RepLKNet's area ratio on maps whose answer is known; image order; CLI option parsing.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from rfgraph import erf_conventions as C
from rfgraph.errors import RFGraphError

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("scalar", list(C.Scalar))
def test_seed_weights_are_the_gradient_of_the_scalar(scalar: C.Scalar) -> None:
    rng = np.random.default_rng(1)
    y = rng.standard_normal((3, 5))
    conv = C.ERFConventions(scalar=scalar, channel=2 if scalar is C.Scalar.CHANNEL else None)
    w = C.seed_weights(conv, 5, y)
    eps = 1e-6
    for b in range(3):
        for c in range(5):
            up, down = y.copy(), y.copy()
            up[b, c] += eps
            down[b, c] -= eps
            fd = (C.scalar_value(conv, up)[b] - C.scalar_value(conv, down)[b]) / (2 * eps)
            assert w[b, c] == pytest.approx(fd, abs=1e-6)


@pytest.mark.parametrize("how,fn", [(C.Aggregation.ABS, abs), (C.Aggregation.SQUARE, lambda v: v * v),
                                    (C.Aggregation.RELU, lambda v: max(v, 0.0)),
                                    (C.Aggregation.SIGNED, lambda v: v)])
def test_aggregation_is_elementwise_then_channel_sum(how: C.Aggregation, fn) -> None:
    g = np.random.default_rng(2).standard_normal((2, 3, 4, 5))
    got = C.aggregate(g, (2, 3), how)
    assert got.shape == (2, 4, 5)
    for b in range(2):
        for i in range(4):
            for j in range(5):
                assert got[b, i, j] == pytest.approx(sum(fn(g[b, c, i, j]) for c in range(3)))


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 5, 3, stride=2, padding=1)).double()


def _ours(net, images: np.ndarray, conv: C.ERFConventions) -> np.ndarray:
    """The conventions applied step by step: forward, seed at the unit, VJP, aggregate, average."""
    maps = []
    for img in images:
        x = torch.tensor(img[None], requires_grad=True)
        out = net(x)
        unit = C.centre_unit(out.shape[2:], conv.centre)
        y_u = out[:, :, unit[0], unit[1]].detach().numpy()
        seed = torch.zeros_like(out)
        seed[:, :, unit[0], unit[1]] = torch.tensor(C.seed_weights(conv, out.shape[1], y_u))
        (g,) = torch.autograd.grad(out, x, grad_outputs=seed)
        maps.append(C.aggregate(g.numpy(), (2, 3), conv.aggregation).sum(axis=0))
    return C.average(maps, conv)[0]


def test_replknet_preset_reproduces_get_input_grad() -> None:
    """RepLKNet's visualize_erf: relu(out[:, :, h//2, w//2]).sum() -> grad -> relu -> sum over
    (batch, channel); AverageMeter over images (NaN maps skipped: see the next test)."""
    net = _net()
    rng = np.random.default_rng(3)
    images = rng.standard_normal((4, 3, 12, 12))
    ref_maps = []
    for img in images:
        x = torch.tensor(img[None], requires_grad=True)
        out = net(x)
        h, w = out.shape[2:]
        central = torch.nn.functional.relu(out[:, :, h // 2, w // 2]).sum()
        (g,) = torch.autograd.grad(central, x)
        m = torch.nn.functional.relu(g).sum((0, 1)).numpy()
        if not np.isnan(np.sum(m)):
            ref_maps.append(m)
    reference = np.mean(ref_maps, axis=0)
    assert len(ref_maps) == 4
    conv = C.preset("replknet")
    got = _ours(net, images, conv)
    np.testing.assert_allclose(got, reference, rtol=1e-12, atol=1e-15)
    floor = _ours(net, images, C.ERFConventions(C.Scalar.RELU_SUM, aggregation=C.Aggregation.RELU,
                                                skip_nonfinite=True))
    assert not np.allclose(floor, reference)  # (n-1)//2 is another unit on a 6x6 output
    shown = C.displayed(got, conv)
    np.testing.assert_allclose(shown, np.log10(reference + 1) / np.log10(reference + 1).max())


def test_nonfinite_maps_are_skipped_only_when_asked() -> None:
    maps = [np.full((2, 2), 1.0), np.full((2, 2), np.nan), np.full((2, 2), 3.0)]
    mean, kept = C.average(maps, C.REPLKNET)
    assert kept == 2 and np.allclose(mean, 2.0)
    mean, kept = C.average(maps, C.LUO)
    assert kept == 3 and np.isnan(mean).all()
    with pytest.raises(RFGraphError, match="non-finite"):
        C.average([np.full((2, 2), np.inf)], C.REPLKNET)


def test_luo_preset_reproduces_a_unit_gradient_on_every_channel() -> None:
    net = _net()
    images = np.random.default_rng(4).standard_normal((3, 3, 11, 11))
    ref = []
    for img in images:
        x = torch.tensor(img[None], requires_grad=True)
        out = net(x)
        c = (out.shape[2] - 1) // 2
        (g,) = torch.autograd.grad(out[:, :, c, c].sum(), x)
        ref.append(g.abs().sum(1)[0].numpy())
    np.testing.assert_allclose(_ours(net, images, C.preset("luo")), np.mean(ref, axis=0), rtol=1e-12)
    assert C.LUO.runs == 20 and C.LUO.inputs == "gaussian" and C.LUO.scaling is C.Scaling.LINEAR


def test_display_scalings() -> None:
    x = np.array([[0.0, 1.0], [9.0, 99.0]])
    np.testing.assert_allclose(C.display(x), x)
    np.testing.assert_allclose(C.display(x, C.Scaling.LOG), [[0, np.log10(2)], [1, 2]])
    np.testing.assert_allclose(C.display(x, C.Scaling.LOG, normalise=True),
                               [[0, np.log10(2) / 2], [0.5, 1]])
    np.testing.assert_allclose(C.display(x, C.Scaling.POWER, gamma=0.5), np.sqrt(x))
    np.testing.assert_allclose(C.display(-x, C.Scaling.POWER, gamma=0.5), -np.sqrt(x))
    with pytest.raises(RFGraphError, match="above -1"):
        C.display(-x, C.Scaling.LOG)


def test_replknet_area_ratio_on_known_maps() -> None:
    """Uniform 11x11: the square of side s holds s^2/121, so t=0.2 first passes at s=5; a delta
    at the centre passes at once, but RepLKNet starts at i=1 (side 3); t=0.99 never passes
    (the largest square tried is 9x9 = 81/121)."""
    ones = np.ones((11, 11))
    assert C.replknet_area_ratio(ones, 0.2) == (5, pytest.approx(25 / 121))
    assert C.replknet_area_ratio(ones, 0.5) == (9, pytest.approx(81 / 121))
    assert C.replknet_area_ratio(ones, 0.99) is None
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    assert C.replknet_area_ratio(delta, 0.99) == (3, pytest.approx(9 / 121))


def test_image_order() -> None:
    assert C.image_order(3, 7, C.Order.SEQUENTIAL) == [0, 1, 2, 0, 1, 2, 0]
    drawn = C.image_order(5, 5, C.Order.RANDOM, np.random.default_rng(7))
    assert sorted(drawn) == list(range(5))
    assert drawn == C.image_order(5, 5, C.Order.RANDOM, np.random.default_rng(7))
    assert C.REPLKNET.order is C.Order.SEQUENTIAL and C.REPLKNET.runs == 50


def test_centre_rules_differ_only_for_even_sizes() -> None:
    assert C.centre_unit((7, 6), C.CentreRule.FLOOR) == (3, 2)
    assert C.centre_unit((7, 6), C.CentreRule.HALF) == (3, 3)


def test_cli_options_and_errors() -> None:
    p = argparse.ArgumentParser()
    C.add_convention_args(p)
    p.add_argument("--channel", type=int)
    conv = C.conventions_from_args(p.parse_args(["--preset", "replknet", "--scale", "power",
                                                 "--gamma", "2"]))
    assert conv.scaling is C.Scaling.POWER and conv.gamma == 2 and conv.aggregation is C.Aggregation.RELU
    assert C.conventions_from_args(p.parse_args([])) == C.DEFAULT == C.LUO
    assert C.conventions_from_args(p.parse_args(["--channel", "3"])).scalar is C.Scalar.CHANNEL
    with pytest.raises(RFGraphError, match="unknown ERF preset"):
        C.preset("nope")
    with pytest.raises(RFGraphError, match="needs a channel"):
        C.ERFConventions(scalar=C.Scalar.CHANNEL)
    with pytest.raises(RFGraphError, match="forward values"):
        C.seed_weights(C.REPLKNET, 4)
    assert dict(C.describe(C.REPLKNET))["display"] == "log10(x+1), / max"


@pytest.mark.parametrize("scalar", list(C.Scalar))
def test_seed_plans_give_the_gradient_of_the_scalar(scalar: C.Scalar) -> None:
    """An engine seeding ``scale`` at one unit (one channel or all) of ``plan.output`` gets
    d s(y_u)/dx: compared with the VJP of y seeded by ``seed_weights`` at the unit (forward
    values from onnxruntime); relu-sum goes through the appended Relu, the rest through y."""
    import onnxruntime as ort

    from model_zoo.builder import GraphBuilder
    from rfgraph import vjp

    b = GraphBuilder("t", input_shape=(1, 3, 12, 12), seed=5)
    x = b.relu(b.conv(b.input, 4, 3, padding=1))
    b.output(b.conv(x, 5, 3, stride=2, padding=1, name="y"))
    model = b.build()
    conv = C.ERFConventions(scalar=scalar, channel=1 if scalar is C.Scalar.CHANNEL else None)
    x0 = np.random.default_rng(6).standard_normal((1, 3, 12, 12)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString()).run(["y"], {"input": x0})[0]
    u = C.centre_unit(y.shape[2:], C.CentreRule.HALF)
    plan = C.seed_plan(model, "y", conv, y.shape[1])
    g_plan = vjp.build_vjp(plan.model, plan.output, x0.shape)
    seed = np.zeros_like(y)
    seed[0, slice(None) if plan.channel is None else plan.channel, u[0], u[1]] = plan.scale
    got = vjp.input_gradient(g_plan, vjp.session(g_plan), x0, seed)
    g_ref = vjp.build_vjp(model, "y", x0.shape)
    seed_ref = np.zeros_like(y)
    seed_ref[0, :, u[0], u[1]] = C.seed_weights(conv, y.shape[1], y[:, :, u[0], u[1]])[0]
    ref = vjp.input_gradient(g_ref, vjp.session(g_ref), x0, seed_ref)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert np.abs(ref).max() > 0
    if scalar is C.Scalar.RELU_SUM:  # the ReLU matters: some channels of the unit are negative
        assert 0 < (y[0, :, u[0], u[1]] > 0).sum() < y.shape[1]
