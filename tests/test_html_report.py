"""``rfgraph report``: the HTML page, checked as a file and end to end in headless Chromium.

Covers: self-containment (every src/href is inline), the per-layer table against a hand-computed
table of a small branchy model (eqs. 1-3 by hand) and against the API, the end-point summary and
alignment verdict (one merge whose branches have centres 1 and 0: eq. 13 fails), the graph (one
node per tensor, one edge per producer/consumer pair, only the merge ringed), the ERF card (unit,
region, picture = the ERF engine's map with its box; a single linear conv's picture against its
closed form |W|), the hover view's lookup tables against ``EndPoint.region`` for every unit,
the image resized like PIL does, 1-D inputs, ``--format json`` against the documented schema, and
one-line errors.  In Chromium (skipped with the reason when chromium or Playwright is absent):
no console errors, the table's rows and sorting, hovering cells draws ``EndPoint.region``, and a
screenshot is kept (``$RFGRAPH_TEST_ARTIFACTS`` or the test's tmp dir).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import rfgraph
from rfgraph import overlay
from rfgraph.cli import main
from rfgraph.html_report import ERFOptions, build_report, sort_key, tensor_dag
from rfgraph.report import per_axis

PIL = pytest.importorskip("PIL.Image")
pytest.importorskip("jinja2")
colormaps = pytest.importorskip("matplotlib").colormaps

DOCS = Path(__file__).resolve().parent.parent / "docs" / "json_schema.md"

# Hand-computed fields of the branchy model (eqs. 1-3; union of regions at the Add):
# tensor: (r, S, P) on both axes; None = global.
BRANCHY = {"x": (1, 1, 0), "t1": (3, 2, 1), "t2": (3, 2, 1), "ta": (5, 4, 1), "tb": (3, 4, 1),
           "sum": (5, 4, 1), "feat": (13, 4, 5), "pooled": None}


# ------------------------------------------------------------------------------------ models


def _conv(name: str, x: str, y: str, shape: tuple[int, ...], k: int, s: int, p: int,
          rng: np.random.Generator, inits: list) -> onnx.NodeProto:
    w = (rng.standard_normal(shape).astype(np.float32) * 0.3)
    inits.append(numpy_helper.from_array(w, name + ".w"))
    nd = len(shape) - 2
    return helper.make_node("Conv", [x, name + ".w"], [y], name=name, kernel_shape=[k] * nd,
                            strides=[s] * nd, pads=[p] * 2 * nd)


def _save(nodes: list, inits: list, x_shape: list[int], out: str, path: Path) -> Path:
    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def branchy(path: Path) -> Path:
    """x(1,3,32,24) -> 3x3/2 conv -> relu -> [2x2/2 conv | 1x1/2 conv] -> Add -> 3x3 conv -> GAP."""
    rng, inits = np.random.default_rng(0), []
    nodes = [_conv("stem", "x", "t1", (4, 3, 3, 3), 3, 2, 1, rng, inits),
             helper.make_node("Relu", ["t1"], ["t2"], name="relu"),
             _conv("a", "t2", "ta", (4, 4, 2, 2), 2, 2, 0, rng, inits),
             _conv("b", "t2", "tb", (4, 4, 1, 1), 1, 2, 0, rng, inits),
             helper.make_node("Add", ["ta", "tb"], ["sum"], name="merge"),
             _conv("head", "sum", "feat", (2, 4, 3, 3), 3, 1, 1, rng, inits),
             helper.make_node("GlobalAveragePool", ["feat"], ["pooled"], name="gap")]
    return _save(nodes, inits, [1, 3, 32, 24], "pooled", path)


W = (np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3) - 5)


def linear(path: Path) -> Path:
    """x(1,1,12,10) -> 3x3 conv with weights W, no padding -> y: the ERF of a unit is |W| on its region."""
    return _save([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
                 [numpy_helper.from_array(W, "w")], [1, 1, 12, 10], "y", path)


def conv1d(path: Path) -> Path:
    """x(1,1,40) -> k5/2 pad 2 conv -> y (20 units)."""
    rng, inits = np.random.default_rng(1), []
    return _save([_conv("c", "x", "y", (1, 1, 5), 5, 2, 2, rng, inits)], inits, [1, 1, 40], "y", path)


# ------------------------------------------------------------------------------------ HTML tree


class Node:
    """An element of the parsed page."""

    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node] = []
        self.content: list[str | Node] = []  # text and children, in document order

    def all_text(self) -> str:
        return "".join(c if isinstance(c, str) else c.all_text() for c in self.content)

    def iter(self):
        yield self
        for c in self.children:
            yield from c.iter()

    def find(self, tag: str | None = None, **attrs: str) -> list[Node]:
        """Descendants with this tag and attribute values (``class_`` matches one class)."""
        out = []
        for n in self.iter():
            if tag and n.tag != tag:
                continue
            ok = True
            for k, v in attrs.items():
                if k == "class_":
                    ok &= v in (n.attrs.get("class") or "").split()
                else:
                    ok &= n.attrs.get(k.replace("_", "-")) == v
            if ok:
                out.append(n)
        return out


VOID = {"meta", "img", "br", "input", "link", "circle", "rect", "path", "image", "hr"}


class TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        self.cur.content.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        self.cur.content.append(node)

    def handle_endtag(self, tag: str) -> None:
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data: str) -> None:
        self.cur.content.append(data)


def parse(html: str) -> Node:
    builder = TreeBuilder()
    builder.feed(html)
    return builder.root


def table_rows(doc: Node, table_id: str) -> list[list[str]]:
    table = doc.find("table", id=table_id)[0]
    body = table.find("tbody")[0]
    return [[td.all_text().strip() for td in tr.find("td")] for tr in body.find("tr")]


def decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    with PIL.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
        return np.asarray(im.convert("RGB"))


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    PIL.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, photo: Path) -> tuple[Path, rfgraph.Analysis, Path, dict]:
    """The branchy model's report, written by the CLI with an image (4 ERF runs, seed 3)."""
    d = tmp_path_factory.mktemp("report")
    model = branchy(d / "branchy.onnx")
    out = d / "report.html"
    assert main(["report", str(model), "-o", str(out), "--image", str(photo), "--erf-runs", "4",
                 "--seed", "3", "-q"]) == 0
    return model, rfgraph.analyze(str(model)), out, {}


@pytest.fixture(scope="module")
def doc(built: tuple) -> Node:
    return parse(built[2].read_text(encoding="utf-8"))


def live_data(doc: Node) -> dict[str, Any]:
    return json.loads(doc.find("script", id="rf-data")[0].all_text())["interactive"]


# ------------------------------------------------------------------------------------ file tests


def test_page_is_self_contained(built: tuple, doc: Node) -> None:
    """Every src/href is inline data or an in-page anchor; no external script, style or font."""
    html = built[2].read_text(encoding="utf-8")
    refs = [(n.tag, k, v) for n in doc.iter() for k, v in n.attrs.items() if k in ("src", "href")]
    assert refs and all(v and (v.startswith("data:") or v.startswith("#")) for _, _, v in refs), refs
    assert not doc.find("link") and all("src" not in s.attrs for s in doc.find("script"))
    assert not re.search(r"@import|url\((?!#)", html)


def test_layer_table_matches_hand_computed_fields(built: tuple, doc: Node) -> None:
    """One row per tensor in graph order; r, S, P as computed by hand (and by the API)."""
    analysis = built[1]
    rows = table_rows(doc, "layer-table")
    assert [r[1] for r in rows] == list(analysis.endpoints) == list(BRANCHY)
    for row in rows:
        want = BRANCHY[row[1]]
        assert row[5:8] == (["global"] * 3 if want is None else [str(v) for v in want]), row
        ep = analysis[row[1]]
        assert row[5:8] == [per_axis(ep.r), per_axis(ep.S), per_axis(ep.P)]
        assert row[9] == ("yes" if ep.aligned else "NO")


def test_summary_and_verdict(built: tuple, doc: Node) -> None:
    rows = table_rows(doc, "endpoint-table")
    assert [r[0] for r in rows] == ["feat", "pooled"]
    assert rows[0][3:9] == ["13", "4", "5", "13", "4", "5"]  # r, S, P along H then W
    verdict = doc.find("p", id="verdict")[0].all_text()
    assert "MISALIGNED at 1 merge(s): merge" in verdict
    items = [li.all_text() for li in doc.find("ul", id="misaligned-list")[0].find("li")]
    assert len(items) == 2 and all("ta S=4 centre=1 r=5; tb S=4 centre=0 r=3" in t for t in items)


def test_graph_has_every_tensor_and_rings_the_misaligned_merge(built: tuple, doc: Node) -> None:
    analysis = built[1]
    nodes = doc.find("g", class_="gnode")
    assert [n.attrs["data-tensor"] for n in nodes] == list(analysis.endpoints)
    assert [n.attrs["data-tensor"] for n in nodes if "misaligned" in n.attrs["class"].split()] == ["sum"]
    assert {n.attrs["data-tensor"]: n.attrs["data-r"] for n in nodes} == \
           {k: ("global" if v is None else str(v[0])) for k, v in BRANCHY.items()}
    edges = doc.find("path", class_="edge")
    assert len(edges) == tensor_dag(analysis).number_of_edges() == 8
    assert len([e for e in edges if "misaligned" in e.attrs["class"]]) == 2  # ta -> sum, tb -> sum


def test_growth_chart_is_the_largest_local_r_per_depth(doc: Node) -> None:
    """Depths of the branchy graph: x, t1, t2, (ta | tb), sum, feat; pooled is global (left out)."""
    points = doc.find("circle", class_="gpoint")
    assert [(int(p.attrs["data-depth"]), int(p.attrs["data-r"])) for p in points] == \
           [(0, 1), (1, 3), (2, 3), (3, 5), (4, 5), (5, 13)]
    ys = [float(p.attrs["cy"]) for p in points]
    assert ys == sorted(ys, reverse=True)  # r never shrinks along the path: y never goes down


def test_erf_card_is_the_engines_map_with_the_trf_box(built: tuple, doc: Node) -> None:
    """Centre unit (3, 2) of feat (8 x 6): region by hand u0 = 4u - 5, v0 = u0 + 12."""
    model, analysis = built[0], built[1]
    cards = doc.find("figure", class_="card")
    assert [c.attrs["data-tensor"] for c in cards] == ["feat"]
    card = cards[0]
    assert card.attrs["data-unit"] == "3,2"
    region = json.loads(card.attrs["data-region"])
    assert region == [[7, 19], [3, 15]] == [list(r) for r in analysis["feat"].region((3, 2))]
    result = rfgraph.erf.compute_erf(str(model), "feat", unit=(3, 2), runs=4, seed=3)
    scale = int(card.attrs["data-scale"])
    want = overlay.compose((32, 24), None, result.erf, region, scale)
    got = decode(card.find("img")[0].attrs["src"])
    assert (got == want).all()
    ys, xs = np.nonzero((got == np.array(overlay.BOX_COLOUR, np.uint8)).all(-1))
    assert [xs.min(), ys.min(), xs.max(), ys.max()] == [int(v) for v in card.attrs["data-box"].split(",")] \
           == [3 * scale, 7 * scale, 16 * scale - 1, 20 * scale - 1]
    shown = {td.attrs["data-metric"]: td.all_text() for td in card.find("td", class_="metric")}
    assert shown["erf_size"] == f"{result.metrics.erf_size:.4g}"


def test_erf_picture_of_a_linear_conv_is_its_closed_form(tmp_path: Path) -> None:
    """Mean |gradient| of unit (i, j) of a linear conv is |W| on rows i..i+2, cols j..j+2."""
    analysis = rfgraph.analyze(str(linear(tmp_path / "lin.onnx")))
    report = build_report(analysis, "lin", erf=ERFOptions(outputs=["y"], runs=2))
    card = parse(report.html).find("figure", class_="card")[0]
    assert card.attrs["data-unit"] == "4,3"  # y is 10 x 8
    pic, scale = decode(card.find("img")[0].attrs["src"]), int(card.attrs["data-scale"])
    expected = np.zeros((12, 10))
    expected[4:7, 3:6] = np.abs(W[0, 0]) / np.abs(W).max()
    colours = (colormaps["inferno"](expected)[..., :3] * 255).round().astype(np.uint8)
    assert (pic[scale // 2::scale, scale // 2::scale] == colours).all()
    assert report.summary["erf"][0]["region"] == [[4, 6], [3, 5]]


def test_a_default_card_before_a_softmax_shows_its_input(tmp_path: Path) -> None:
    """The card rfgraph picks ends in a Softmax over channels (a classifier, a VAD's logits): its
    channel sum is 1, so the card shows the ERF of the Softmax's input (the same positions), saying
    so, instead of an error (the report's exit 1); the map is that tensor's own ERF.  A card the
    user names keeps the refusal."""
    rng, inits = np.random.default_rng(2), []
    path = _save([_conv("c", "x", "logits", (3, 1, 3, 3), 3, 1, 1, rng, inits),
                  helper.make_node("Softmax", ["logits"], ["prob"], axis=1)], inits, [1, 1, 12, 10], "prob",
                 tmp_path / "soft.onnx")
    analysis = rfgraph.analyze(str(path))
    report = build_report(analysis, "soft", erf=ERFOptions(runs=2))
    (card,) = parse(report.html).find("figure", class_="card")
    assert card.attrs["data-tensor"] == "prob" and not report.notes
    assert "ERF of <code>logits</code>, the input of the normalisation" in report.html
    want = rfgraph.erf.compute_erf(str(path), "logits", runs=2)
    pic = overlay.compose((12, 10), None, want.erf, json.loads(card.attrs["data-region"]),
                          int(card.attrs["data-scale"]))
    assert (decode(card.find("img")[0].attrs["src"]) == pic).all()
    named = build_report(analysis, "soft", erf=ERFOptions(outputs=["prob"], runs=2))
    assert len(named.notes) == 1 and "rounding noise" in named.notes[0]


def test_a_video_model_gets_a_card_of_frames(tmp_path: Path) -> None:
    """A 3-D input (T, H, W) got no ERF card (only 1-D and 2-D were drawn): its card is the row of
    frames ``rfgraph show`` draws, from the engine's own map."""
    rng, inits = np.random.default_rng(4), []
    path = _save([_conv("c3", "x", "y", (2, 1, 3, 3, 3), 3, 1, 1, rng, inits)], inits, [1, 1, 5, 8, 6], "y",
                 tmp_path / "video.onnx")
    analysis = rfgraph.analyze(str(path))
    report = build_report(analysis, "video", erf=ERFOptions(runs=2))
    (card,) = parse(report.html).find("figure", class_="card")
    assert card.attrs["data-unit"] == "2,3,2" and not report.notes
    region = json.loads(card.attrs["data-region"])
    want = rfgraph.erf.compute_erf(str(path), "y", runs=2)
    pic, frames = overlay.compose_frames((5, 8, 6), None, want.erf, region, int(card.attrs["data-scale"]))
    assert frames == [0, 1, 2, 3, 4] and (decode(card.find("img")[0].attrs["src"]) == pic).all()


def test_hover_tables_give_the_api_region_of_every_unit(built: tuple, doc: Node) -> None:
    """The page's per-axis lookup (regions[a][u]) reproduces EndPoint.region for every unit."""
    analysis, data = built[1], live_data(doc)
    assert set(data["endpoints"]) == set(analysis.endpoints) - {"pooled"}  # global: no hover
    assert data["default"] == "feat" and (data["height"], data["width"]) == (32, 24)
    for name, ep_data in data["endpoints"].items():
        ep = analysis[name]
        for idx in np.ndindex(*ep.units):
            assert [ep_data["regions"][a][u] for a, u in enumerate(idx)] == [list(r) for r in ep.region(idx)]
            assert [ep_data["centres"][a][u] for a, u in enumerate(idx)] == [float(c) for c in ep.centre(idx)]


def test_hover_background_is_the_image_resized(doc: Node, photo: Path) -> None:
    uri = doc.find("svg", id="iv-image")[0].find("image")[0].attrs["href"]
    with PIL.open(photo) as im:
        want = np.asarray(im.convert("RGB").resize((24, 32), PIL.Resampling.BILINEAR))
    assert (decode(uri) == want).all()


def test_one_d_input(tmp_path: Path) -> None:
    """A 1-D conv: one lookup axis, regions u0 = 2u - 2, v0 = u0 + 4; the strip is STRIP rows tall."""
    analysis = rfgraph.analyze(str(conv1d(tmp_path / "c1.onnx")))
    report = build_report(analysis, "c1", erf=ERFOptions(runs=1))
    data = live_data(parse(report.html))
    assert data["ndim"] == 1 and (data["height"], data["width"]) == (overlay.STRIP, 40)
    assert data["endpoints"]["y"]["regions"] == [[[2 * u - 2, 2 * u + 2] for u in range(20)]]
    assert report.summary["erf"][0]["unit"] == [9] and report.summary["erf"][0]["error"] is None


def test_report_of_a_torch_module_shows_module_names(tmp_path: Path) -> None:
    """render_report takes from_torch's Analysis: the table lists module names, not exporter names."""
    torch = pytest.importorskip("torch")
    from rfgraph.html_report import render_report

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(2, 2, 3))
    report = render_report(rfgraph.from_torch(net, torch.zeros(1, 1, 20, 20)), tmp_path / "t.html",
                           erf=None, title="net")
    rows = table_rows(parse((tmp_path / "t.html").read_text(encoding="utf-8")), "layer-table")
    assert [r[1] for r in rows][1:] == ["0", "1", "2"]
    assert [r[5] for r in rows] == ["1", "3", "3", "7"]  # r = 3, then 3 + 2 * 2
    assert report.summary["title"] == "net"


def test_sort_keys() -> None:
    """Per-axis cells sort by their largest value; fractional strides parse; global sorts last."""
    assert sort_key([3, 5]) == 5 and sort_key(["1/2", "3/4"]) == 0.75 and sort_key([None]) > 1e17


def _schema(name: str) -> dict:
    """The JSON Schema block of section ``name`` in docs/json_schema.md."""
    text = DOCS.read_text(encoding="utf-8")
    block = re.search(rf"<!-- schema: {name} -->\s*```json\n(.*?)```", text, re.DOTALL)
    assert block, f"docs/json_schema.md has no schema block for {name}"
    return json.loads(block.group(1))


def test_json_summary_follows_the_documented_schema(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    model = branchy(tmp_path / "b.onnx")
    out = tmp_path / "r.html"
    assert main(["report", str(model), "-o", str(out), "--no-erf", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, _schema("report"))
    jsonschema.validate({k: doc[k] for k in _schema("analyze")["required"]}, _schema("analyze"))
    assert doc["report"] == str(out) and doc["bytes"] == len(out.read_bytes())
    assert [e["tensor"] for e in doc["endpoints"]] == ["feat", "pooled"] and doc["erf"] == []
    assert not parse(out.read_text(encoding="utf-8")).find("figure", class_="card")


@pytest.mark.parametrize("extra, message", [
    (["--image", "/nonexistent.png"], "does not exist"),
    (["--erf-output", "nope"], "no tensor named 'nope'"),
    (["--erf-runs", "0"], "at least 1"),
    (["-o", "/nonexistent-dir/r.html", "--no-erf"], "cannot write"),
])
def test_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str],
                                    message: str) -> None:
    model = branchy(tmp_path / "b.onnx")
    args = ["report", str(model), *extra]
    if "-o" not in extra:
        args += ["-o", str(tmp_path / "r.html")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("rfgraph: error:")


# ------------------------------------------------------------------------------------ Chromium

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    """$RFGRAPH_CHROMIUM, else chromium / chromium-browser / google-chrome on PATH."""
    env = os.environ.get("RFGRAPH_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.fixture(scope="module")
def browser():
    exe = chromium_path()
    if exe is None:
        pytest.skip("chromium not found on PATH or at $RFGRAPH_CHROMIUM (apt-get install chromium); "
                    "CI installs it")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Python package playwright is not installed (pip install playwright); CI installs it")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


def hover_cell(page: Any, i: int, j: int, rows: int, cols: int) -> dict[str, Any]:
    """Hover the middle of output cell (i, j) of the grid; return the box the page drew."""
    grid = page.locator("#iv-grid")
    bb = grid.bounding_box()
    grid.hover(position={"x": (j + 0.5) * bb["width"] / cols, "y": (i + 0.5) * bb["height"] / rows})
    box = page.locator("#rf-box")
    return {"region": json.loads(box.get_attribute("data-region")), "cell": box.get_attribute("data-cell"),
            "rect": [float(box.get_attribute(k)) for k in ("x", "y", "width", "height")]}


def clipped_rect(region: tuple, height: int, width: int) -> list[float]:
    """x, y, width, height of a region clipped to the input (what the page should draw)."""
    (y0, y1), (x0, x1) = region
    y0, y1, x0, x1 = max(y0, 0), min(y1, height - 1), max(x0, 0), min(x1, width - 1)
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def test_report_in_chromium(browser: Any, built: tuple, tmp_path: Path) -> None:
    """Loads without console errors; rows and sorting; hovering draws EndPoint.region; screenshot."""
    analysis, out = built[1], built[2]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: problems.append(f"request: {r.url}")
            if not r.url.startswith(("file:", "data:")) else None)
    page.goto(out.resolve().as_uri())
    page.wait_for_load_state("load")

    names = page.locator("#layer-table tbody tr").evaluate_all("rs => rs.map(r => r.dataset.tensor)")
    assert names == list(analysis.endpoints)
    page.locator("#layer-table thead th", has_text=re.compile(r"^r$")).click()
    ascending = page.locator("#layer-table tbody tr").evaluate_all("rs => rs.map(r => r.dataset.tensor)")
    assert ascending == sorted(analysis.endpoints, key=lambda n: sort_key(analysis[n].r))
    assert ascending[-1] == "pooled" and ascending[0] == "x"
    page.locator("#layer-table thead th", has_text=re.compile(r"^r$")).press("Enter")  # keyboard too
    descending = page.locator("#layer-table tbody tr").evaluate_all("rs => rs.map(r => r.dataset.tensor)")
    assert descending == sorted(ascending, key=lambda n: sort_key(analysis[n].r), reverse=True)

    for name, cells in {"feat": [(0, 0), (7, 5), (3, 2), (0, 5)], "ta": [(0, 0), (5, 3)]}.items():
        page.select_option("#iv-endpoint", name)
        ep = analysis[name]
        for i, j in cells:
            drawn = hover_cell(page, i, j, *ep.units)
            assert drawn["cell"] == f"{i},{j}"
            assert drawn["region"] == [list(r) for r in ep.region((i, j))]
            assert drawn["rect"] == clipped_rect(ep.region((i, j)), 32, 24)
    readout = page.locator("#iv-readout").inner_text()
    assert "unit (5, 3) of ta" in readout and "H [19, 23]" in readout and "W [11, 15]" in readout

    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    artifacts = os.environ.get("RFGRAPH_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / "report.png")
    with PIL.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert (pixels == np.array([0, 255, 255], np.uint8)).all(-1).sum() > 50  # the box is on screen
    page.close()
    assert problems == []


OVERLAPS = """els => {
  const boxes = els.map(e => e.getBoundingClientRect()).map(b => [b.left, b.top, b.right, b.bottom]);
  const hits = [];
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const [a, b] = [boxes[i], boxes[j]];
    if (a[0] < b[2] - 0.5 && b[0] < a[2] - 0.5 && a[1] < b[3] - 0.5 && b[1] < a[3] - 0.5) hits.push([i, j]);
  }
  return {count: boxes.length, hits: hits.length, widest: Math.max(...boxes.map(b => b[2] - b[0]))};
}"""


def test_graph_labels_are_readable_on_a_wide_model(browser: Any, tmp_path: Path) -> None:
    """Inception-v3 (branches side by side, names like InceptionV3/Mixed_6b/Branch_2/...): no two
    node labels overlap (one-line labels of name, op and r overran their 190 px column before), the
    full name is in each node's tooltip, and the zoom buttons scale the drawing; screenshot saved."""
    out = tmp_path / "inception.html"
    assert main(["report", "zoo:inception_v3", "--no-erf", "-o", str(out), "-q"]) == 0
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(out.resolve().as_uri())
    page.wait_for_load_state("load")
    labels = page.locator("#graph .gnode text")
    found = labels.evaluate_all(OVERLAPS)
    assert found["count"] > 200 and found["hits"] == 0, found
    assert found["widest"] < 190 - 12, found  # within its column
    titles = page.locator("#graph-svg .gnode title").evaluate_all("els => els.map(e => e.textContent)")
    assert any(t.startswith("Mixed_6b/Branch_1/Relu_1\n") for t in titles)  # whole name, cut on the label
    svg = page.locator("#graph-svg")
    width = float(svg.get_attribute("width"))
    page.locator("#graph .zoom button", has_text="+").click()
    assert float(svg.get_attribute("width")) == pytest.approx(width * 1.25, abs=1)
    page.locator("#graph .zoom button", has_text="fit").click()
    assert float(svg.get_attribute("width")) <= page.locator("#graph-view").bounding_box()["width"]
    page.locator("#graph .zoom button", has_text="100%").click()
    assert float(svg.get_attribute("width")) == pytest.approx(width, abs=1)
    shot = tmp_path / "graph.png"
    page.locator("#graph-view").screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("RFGRAPH_SCREENSHOTS")
    if keep:  # for a person to look at: RFGRAPH_SCREENSHOTS=DIR pytest -k readable
        shutil.copy(shot, Path(keep) / "report_graph_inception_v3.png")
    page.close()
