"""ERF conventions wired into ``compute_erf`` and ``rfgraph erf``, against torch autograd.

Covers: the ``luo`` preset gives exactly the default map (API and CLI); the ``replknet`` preset
equals RepLKNet's visualize_erf loop written in torch (ReLU-sum of the unit at n//2 on an even
output where n//2 != (n-1)//2, ReLU of the input gradient summed over channels, images in sorted
order, a NaN image skipped and replaced by the next one; area ratios of the log-scaled map as
analyze_erf.py computes them); each scalar x aggregation x centre rule
against a torch reference on the same Gaussian draws; ``mean`` == ``sum`` / C; the CLI's
``--preset replknet --format json`` (50 runs, the n//2 unit, the images fallback noted), the
display options on --png, and --signed contradicting --aggregate.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from rfgraph import cli
from rfgraph import erf_conventions as ec
from rfgraph.erf import INPUT_KEY, compute_erf, keyed_rng

SIZE = 16  # input side; the net's output is 8 x 8: centre (n-1)//2 = 3, n//2 = 4
MEAN, STD = (0.2, 0.5, 0.5), (0.5, 0.5, 0.5)  # channel-0 pixels >= 0.2 * 255 normalise to >= 0


class SqrtNet(torch.nn.Module):
    """conv-relu-conv/2, plus 0.01 * sqrt(channel 0 subsampled): finite while channel 0 >= 0, a
    NaN gradient (0 / sqrt(negative)) anywhere otherwise, as torch gives it; ``sqrt=False``:
    no such branch (finite for any input)."""

    def __init__(self, sqrt: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.sqrt = sqrt
        self.c1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = torch.nn.Conv2d(4, 5, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c2(torch.relu(self.c1(x)))
        return y + 0.01 * torch.sqrt(x[:, :1, ::2, ::2]) if self.sqrt else y


def export(net: torch.nn.Module) -> onnx.ModelProto:
    f = io.BytesIO()
    torch.onnx.export(net, (torch.ones(1, 3, SIZE, SIZE),), f, dynamo=False, input_names=["x"],
                      output_names=["y"])
    return onnx.load_from_string(f.getvalue())


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    return SqrtNet().eval()


@pytest.fixture(scope="module")
def model(net: torch.nn.Module) -> onnx.ModelProto:
    return export(net)


@pytest.fixture(scope="module")
def plain() -> onnx.ModelProto:
    """The same convolutions without the sqrt branch."""
    return export(SqrtNet(sqrt=False).eval())


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five 16x16 PNGs (no resampling); im1 has channel-0 pixels below the mean (a NaN map)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(5)
    for i in range(5):
        arr = (rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
        arr[..., 0] = rng.integers(0, 40, (SIZE, SIZE)) if i == 1 else \
            rng.integers(60, 256, (SIZE, SIZE))
        Image.fromarray(arr).save(folder / f"im{i}.png")
    return folder


def load_image(path: Path) -> torch.Tensor:
    """An image as RepLKNet's transform gives it (ToTensor, Normalize), at its own size."""
    from PIL import Image

    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    x = (arr.transpose(2, 0, 1) - np.array(MEAN, np.float32)[:, None, None]) / \
        np.array(STD, np.float32)[:, None, None]
    return torch.tensor(x[None])


def replknet_reference(net: torch.nn.Module, files: list[Path], num_images: int,
                       half: bool = True) -> np.ndarray:
    """RepLKNet's erf/visualize_erf.py: get_input_grad per image in order, NaN maps skipped,
    averaged over the first ``num_images`` kept (``half=False``: the unit at (n-1)//2)."""
    maps: list[np.ndarray] = []
    for path in files:
        if len(maps) == num_images:
            break
        samples = load_image(path).requires_grad_(True)
        outputs = net(samples)
        h, w = outputs.shape[2:]
        i, j = (h // 2, w // 2) if half else ((h - 1) // 2, (w - 1) // 2)
        central_point = torch.nn.functional.relu(outputs[:, :, i, j]).sum()
        (grad,) = torch.autograd.grad(central_point, samples)
        grad_map = torch.nn.functional.relu(grad).sum((0, 1)).numpy()
        if np.isnan(np.sum(grad_map)):
            continue
        maps.append(grad_map)
    return np.mean(maps, axis=0)


def get_rectangle(data: np.ndarray, thresh: float) -> tuple[int, float] | None:
    """RepLKNet's erf/analyze_erf.py: the smallest centred square (i >= 1) above ``thresh``."""
    h, w = data.shape
    all_sum = np.sum(data)
    for i in range(1, h // 2):
        area_sum = np.sum(data[h // 2 - i:h // 2 + 1 + i, w // 2 - i:w // 2 + 1 + i])
        if area_sum / all_sum > thresh:
            return i * 2 + 1, (i * 2 + 1) / h * (i * 2 + 1) / w
    return None


def test_luo_preset_equals_the_default_exactly(plain: onnx.ModelProto, images: Path,
                                               tmp_path: Path) -> None:
    """Gaussian inputs and an image folder (random order): bit-identical maps, API and CLI."""
    for inputs in ("gaussian", str(images)):
        kwargs = {"runs": 5, "seed": 3, "inputs": inputs, "mean": MEAN, "std": STD}
        default = compute_erf(plain, **kwargs)
        luo = compute_erf(plain, conventions=ec.LUO, **kwargs)
        assert np.isfinite(default.erf).all() and default.erf.max() > 0
        np.testing.assert_array_equal(luo.erf, default.erf)
        assert luo.target.unit == default.target.unit == (3, 3)
    path = tmp_path / "m.onnx"
    onnx.save(plain, path)
    files = []
    for extra in ([], ["--preset", "luo"]):
        files.append(tmp_path / f"e{len(files)}.npy")
        argv = ["erf", str(path), "--runs", "4", "--seed", "2", "--npy", str(files[-1]),
                "--no-progress", "--format", "json"]
        assert cli.main(argv + extra) == 0
    np.testing.assert_array_equal(np.load(files[0]), np.load(files[1]))


def test_replknet_preset_equals_its_torch_procedure(net: torch.nn.Module, model: onnx.ModelProto,
                                                    images: Path) -> None:
    """3 images in sorted order: im0, im2, im3 (im1 is NaN and is replaced by the next image)."""
    files = sorted(images.iterdir())
    reference = replknet_reference(net, files, 3)
    res = compute_erf(model, runs=3, inputs=str(images), mean=MEAN, std=STD,
                      conventions=ec.REPLKNET)
    assert res.target.unit == (4, 4) and res.samples == 3
    assert any("1 of 4 inputs" in n for n in res.notes)
    np.testing.assert_allclose(res.erf, reference, rtol=1e-4, atol=1e-6 * reference.max())
    assert not np.allclose(res.erf, replknet_reference(net, files, 3, half=False), rtol=1e-2)
    shown_ref = np.log10(reference + 1) / np.log10(reference + 1).max()
    np.testing.assert_allclose(ec.displayed(res.erf, res.conventions), shown_ref, rtol=1e-4,
                               atol=1e-7)
    ours = [(a.side, a.ratio) for a in res.displayed_area_ratios]
    theirs = [get_rectangle(shown_ref, t) or (None, None) for t in (0.2, 0.3, 0.5, 0.99)]
    assert ours == theirs and any(side for side, _ in theirs)


def scalar(y: torch.Tensor, conv: ec.ERFConventions) -> torch.Tensor:
    """s(y_u) of the unit's channel vector: sum, mean, sum of ReLU, or one channel."""
    if conv.scalar is ec.Scalar.SUM:
        return y.sum()
    if conv.scalar is ec.Scalar.MEAN:
        return y.mean()
    if conv.scalar is ec.Scalar.RELU_SUM:
        return torch.relu(y).sum()
    return y[conv.channel]


def torch_erf(net: torch.nn.Module, xs: list[np.ndarray], conv: ec.ERFConventions) -> np.ndarray:
    """d s(y_u)/dx by autograd, ``conv.aggregation`` per element, summed over channels, mean."""
    agg = {ec.Aggregation.ABS: torch.abs, ec.Aggregation.SQUARE: torch.square,
           ec.Aggregation.RELU: torch.relu, ec.Aggregation.SIGNED: lambda g: g}[conv.aggregation]
    maps = []
    for x in xs:
        xt = torch.tensor(x, requires_grad=True)
        out = net(xt)
        n = out.shape[2]
        i = n // 2 if conv.centre is ec.CentreRule.HALF else (n - 1) // 2
        s = scalar(out[0, :, i, i], conv)
        (g,) = torch.autograd.grad(s, xt)
        maps.append(agg(g)[0].sum(0).numpy())
    return np.mean(maps, axis=0)


@pytest.mark.parametrize("conv", [
    ec.ERFConventions(ec.Scalar.CHANNEL, 2, ec.Aggregation.SQUARE, centre=ec.CentreRule.HALF),
    ec.ERFConventions(ec.Scalar.MEAN, aggregation=ec.Aggregation.SIGNED),
    ec.ERFConventions(ec.Scalar.RELU_SUM, aggregation=ec.Aggregation.RELU),
    ec.ERFConventions(ec.Scalar.RELU_SUM, aggregation=ec.Aggregation.ABS, centre=ec.CentreRule.HALF),
], ids=lambda c: f"{c.scalar.value}-{c.aggregation.value}-{c.centre.value}")
def test_each_convention_against_torch(net: torch.nn.Module, model: onnx.ModelProto,
                                       conv: ec.ERFConventions) -> None:
    """Uniform inputs (channel 0 >= 0: finite), drawn as compute_erf draws them at batch 1."""
    res = compute_erf(model, runs=3, seed=7, batch=1, inputs="uniform", conventions=conv)
    xs = [keyed_rng(7, INPUT_KEY, 0, i).random((1, 3, SIZE, SIZE)).astype(np.float32)
          for i in range(3)]
    ref = torch_erf(net, xs, conv)
    np.testing.assert_allclose(res.erf, ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())


def test_mean_is_the_sum_over_channels(model: onnx.ModelProto) -> None:
    """Scalar 'mean' seeds 1/C on each of the C = 5 channels: the |.| map is the sum map / C."""
    total = compute_erf(model, runs=4, seed=1, inputs="uniform")
    mean = compute_erf(model, runs=4, seed=1, inputs="uniform",
                       conventions=ec.ERFConventions(ec.Scalar.MEAN))
    np.testing.assert_allclose(mean.erf, total.erf / 5, rtol=1e-6)
    assert total.erf.max() > 0


def test_cli_replknet_preset_json(plain: onnx.ModelProto, tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    """No folder: 50 Gaussian runs (noted), the n//2 unit, every convention stated."""
    path = tmp_path / "m.onnx"
    onnx.save(plain, path)
    capsys.readouterr()
    assert cli.main(["erf", str(path), "--preset", "replknet", "--format", "json",
                     "--no-progress"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["runs"] == data["samples"] == 50 and data["unit"] == [4, 4]
    assert data["conventions"]["scalar"] == "relu-sum"
    assert data["conventions"]["display"] == "log10(x+1), / max"
    assert any("--inputs DIR" in n for n in data["notes"])
    assert [r["t"] for r in data["displayed_area_ratios"]] == [0.2, 0.3, 0.5, 0.99]


def test_cli_display_options_and_conflicts(model: onnx.ModelProto, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    """--scale power --gamma --normalise --centre --order draw a PNG; --signed vs --aggregate
    relu is a usage error (exit 2)."""
    path, png = tmp_path / "m.onnx", tmp_path / "e.png"
    onnx.save(model, path)
    assert cli.main(["erf", str(path), "--runs", "2", "--inputs", "uniform", "--scale", "power",
                     "--gamma", "2", "--normalise", "--centre", "half", "--order", "sequential",
                     "--scalar", "relu-sum", "--aggregate", "square", "--png", str(png),
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "unit (4, 4)" in out and "relu-sum" in out and "grad^2" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["erf", str(path), "--runs", "1", "--signed", "--aggregate", "relu",
                     "--no-progress"]) == 2
    assert "--signed contradicts" in capsys.readouterr().err
