"""``rfgraph show`` and ``rfgraph.overlay``.

Covers: the TRF box's exact pixels (outline drawn inside the region's outer edge, clipped at the
input border, 1-D strips), the heatmap's colours against the ERF's closed form (a single linear
conv: the mean |input gradient| of unit (i, j) is |W| placed at the unit's region, zero elsewhere),
the image resized like PIL does, the JSON document against the API (``EndPoint.region``), and
one-line errors with exit code 2 (bad index, global tensor, missing image, bad --runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rfgraph
from rfgraph import overlay
from rfgraph.cli import main

PIL = pytest.importorskip("PIL.Image")
colormaps = pytest.importorskip("matplotlib").colormaps

W = (np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3) - 5)  # |W| has its max at a corner
CYAN = np.array(overlay.BOX_COLOUR, dtype=np.uint8)


def linear_conv(path: Path, h: int = 12, w: int = 10) -> Path:
    """x (1, 1, h, w) -> 3x3 conv, no padding, weights W -> y; then a global pool -> g."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
             helper.make_node("GlobalAveragePool", ["y"], ["g"], name="gap")]
    graph = helper.make_graph(nodes, "lin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, h, w])],
                              [helper.make_tensor_value_info("g", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(W, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return linear_conv(tmp_path / "lin.onnx")


def read_png(path: Path) -> np.ndarray:
    with PIL.open(path) as im:
        return np.asarray(im.convert("RGB"))


def ring(shape: tuple[int, int], x0: int, y0: int, x1: int, y1: int, width: int) -> np.ndarray:
    """Boolean mask of a rectangle outline ``width`` pixels thick inside [x0, x1] x [y0, y1]."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    inside = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
    core = (xx >= x0 + width) & (xx <= x1 - width) & (yy >= y0 + width) & (yy <= y1 - width)
    return inside & ~core


def cyan(pic: np.ndarray) -> np.ndarray:
    return (pic == CYAN).all(axis=-1)


def test_box_pixels_exactly_outline_the_region() -> None:
    """Region rows [2, 4], cols [3, 5] at scale 4: picture pixels x 12..23, y 8..19, 2 px thick."""
    pic = overlay.compose((12, 10), region=((2, 4), (3, 5)), scale=4)
    assert pic.shape == (48, 40, 3)
    assert overlay.box_pixels(((2, 4), (3, 5)), (12, 10), 4) == (12, 8, 23, 19)
    assert (cyan(pic) == ring((48, 40), 12, 8, 23, 19, 2)).all()


def test_box_is_clipped_at_the_input_border() -> None:
    """A region reaching outside (padding) is drawn up to the border; wholly outside: no box."""
    pic = overlay.compose((12, 10), region=((-3, 1), (8, 12)), scale=2)
    assert overlay.box_pixels(((-3, 1), (8, 12)), (12, 10), 2) == (16, 0, 19, 3)
    assert (cyan(pic) == ring((24, 20), 16, 0, 19, 3, 2)).all()
    assert overlay.box_pixels(((-5, -1), (0, 3)), (12, 10), 2) is None


def test_one_d_region_spans_the_strip() -> None:
    size = overlay.grid_size((1, 3, 50), (2,))
    assert size == (overlay.STRIP, 50)
    assert overlay.box_pixels(((10, 20),), size, 3) == (30, 0, 62, 3 * overlay.STRIP - 1)


def test_show_heatmap_matches_closed_form_erf(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """No image: every input pixel's colour is inferno(|W| / max|W|) inside the region, inferno(0) outside."""
    out = tmp_path / "o.png"
    assert main(["show", str(model), "--output", "y", "--index", "2,3", "-o", str(out), "--runs", "3",
                 "--scale", "8", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    pic = read_png(out)
    expected = np.zeros((12, 10))
    expected[2:5, 3:6] = np.abs(W[0, 0]) / np.abs(W).max()
    colours = (colormaps["inferno"](expected)[..., :3] * 255).round().astype(np.uint8)
    centres = pic[4::8, 4::8]  # the middle of every input pixel, clear of the 2-px box line
    assert (centres == colours).all()
    assert doc["erf"]["runs"] == 3 and doc["erf"]["method"] == "grad"
    assert doc["erf"]["metrics"]["shape"] == [12, 10]


def test_show_json_agrees_with_the_api_and_the_picture(model: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "o.png"
    assert main(["show", str(model), "--output", "y", "--index", "7,0", "-o", str(out), "--no-erf",
                 "--scale", "4", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ep = rfgraph.analyze(str(model))["y"]
    assert doc["region"] == [list(r) for r in ep.region((7, 0))] == [[7, 9], [0, 2]]
    assert doc["centre"] == [8, 1] and doc["r"] == [3, 3] and doc["erf"] is None
    ys, xs = np.nonzero(cyan(read_png(out)))
    assert doc["picture"]["box"] == [xs.min(), ys.min(), xs.max(), ys.max()] == [0, 28, 11, 39]
    assert (doc["picture"]["width"], doc["picture"]["height"]) == (40, 48)


def test_image_is_resized_to_the_input(model: Path, tmp_path: Path) -> None:
    """Away from the box, the picture is the photo resized (bilinear) to the 12x10 input grid."""
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    PIL.fromarray(rng.integers(0, 255, (60, 50, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "o.png"
    assert main(["show", str(model), "--output", "y", "--index", "0,0", "-o", str(out), "--no-erf",
                 "--image", str(photo), "--scale", "1", "-q"]) == 0
    with PIL.open(photo) as im:
        resized = np.asarray(im.convert("RGB").resize((10, 12), PIL.Resampling.BILINEAR))
    pic = read_png(out)
    away = ~ring((12, 10), 0, 0, 2, 2, 2)
    assert (pic[away] == resized[away]).all()


def test_default_index_is_the_centre_unit(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["show", str(model), "--output", "y", "-o", str(tmp_path / "o.png"), "--no-erf",
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["index"] == [4, 3]  # y is 10 x 8


def test_quiet_prints_nothing(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["show", str(model), "--output", "y", "-o", str(tmp_path / "o.png"), "--no-erf", "-q"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["--quiet", "show", str(model), "--output", "y", "-o", str(tmp_path / "o.png"), "--no-erf"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["show", str(model), "--output", "y", "-o", str(tmp_path / "o.png"), "--no-erf"]) == 0
    assert capsys.readouterr().out.startswith("wrote ")


@pytest.mark.parametrize("extra, message", [
    (["--output", "y", "--index", "10,0"], "outside 'y'"),
    (["--output", "y", "--index", "a,b"], "expected integers"),
    (["--output", "g"], "global field"),
    (["--output", "nope"], "no tensor named 'nope'"),
    (["--output", "y", "--image", "/nonexistent.jpg"], "does not exist"),
    (["--output", "y", "--runs", "0"], "at least 1"),
])
def test_errors_are_one_line_exit_2(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                    extra: list[str], message: str) -> None:
    assert main(["show", str(model), "-o", str(tmp_path / "o.png"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("rfgraph: error:")


W3 = (np.arange(1, 28, dtype=np.float32).reshape(1, 1, 3, 3, 3) - 14)  # |W3| largest at two corners


def linear_conv3d(path: Path, t: int) -> Path:
    """x (1, 1, t, 6, 5) -> 3x3x3 conv, no padding, weights W3 -> y."""
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv3d")], "lin3",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, t, 6, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(W3, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_video_input_is_drawn_as_a_row_of_frames(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """3-D input (T=5, 6, 5): five frames, 4 px apart; frame t holds |W3[t - 1]| / max|W3| on the
    unit's H x W region (the closed-form ERF of a linear conv, one colour scale for all frames) and
    the box only on the frames of its T extent [1, 3] (it was refused: 'pictures need 1-D or 2-D')."""
    out = tmp_path / "v.png"
    assert main(["show", str(linear_conv3d(tmp_path / "c3.onnx", 5)), "--output", "y", "--index", "1,2,1",
                 "-o", str(out), "--runs", "2", "--scale", "8", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["region"] == [[1, 3], [2, 4], [1, 3]]
    picture = doc["picture"]
    assert picture["frames"] == [0, 1, 2, 3, 4] and picture["frame_pitch"] == 5 * 8 + overlay.FRAME_GAP
    pic = read_png(out)
    assert pic.shape == (48, 5 * 40 + 4 * overlay.FRAME_GAP, 3) == (picture["height"], picture["width"], 3)
    for t in range(5):
        frame = pic[:, t * picture["frame_pitch"]: t * picture["frame_pitch"] + 40]
        expected = np.zeros((6, 5))
        if 1 <= t <= 3:
            expected[2:5, 1:4] = np.abs(W3[0, 0, t - 1]) / np.abs(W3).max()
        colours = (colormaps["inferno"](expected)[..., :3] * 255).round().astype(np.uint8)
        assert (frame[4::8, 4::8] == colours).all(), t
        ys, xs = np.nonzero(cyan(frame))
        if 1 <= t <= 3:
            assert [xs.min(), ys.min(), xs.max(), ys.max()] == picture["box"] == [8, 16, 31, 39]
        else:
            assert not len(xs)


def test_long_videos_draw_sixteen_frames_with_the_region_s_ends() -> None:
    """40 frames: 16 evenly spaced, the region's first and last frames among them."""
    frames = overlay.frame_indices(40, (17, 21))
    assert len(frames) == 16 and {17, 21} <= set(frames) and frames == sorted(set(frames))
    assert overlay.frame_indices(40) == [int(round(v)) for v in np.linspace(0, 39, 16)]
    assert overlay.frame_indices(7, (2, 3)) == list(range(7))
