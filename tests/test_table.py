"""``rfgraph table``: verdicts against published numbers given at run time, formats, exit codes.

Covers: the twelve rows against Araujo et al.'s numbers (from a CSV written here, and from
../shared when present); per-end-point rows against the receptive_field library's table,
resolution-specific rows; a wrong reference number shown as "differ" (and exit 1 on request);
no reference at all; CSV/Markdown/JSON output; TF-slim vs PyTorch conventions side by side.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from test_model_zoo import ENDPOINTS_224, P_AT_321, PUBLISHED

from rfgraph.cli import main

SHARED_CSV = Path(__file__).resolve().parents[2] / "shared" / "reference" / "modern_networks_rf.csv"


def run_table(capsys, *args: str) -> tuple[int, str]:
    code = main(["table", *args])
    return code, capsys.readouterr().out


def write_csv(path: Path, header: list[str], rows: list[tuple]) -> Path:
    with path.open("w", newline="") as f:
        f.write("# test reference\n")
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def published_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "pub.csv", ["model", "r", "S", "P"],
                     [(m, *v) for m, v in PUBLISHED.items()])


def test_twelve_rows_match_published(capsys, published_csv):
    """Default models = the twelve TF-slim nets; every row says match, with our numbers shown."""
    code, out = run_table(capsys, "--format", "json", "--reference", str(published_csv))
    rows = json.loads(out)["rows"]
    assert code == 0 and sorted(r["model"] for r in rows) == sorted(PUBLISHED)
    for row in rows:
        r, S, P = PUBLISHED[row["model"]]
        assert row["r"] == [r, r] and row["S"] == [S, S] and row["P"] == [P, P]
        assert row["verdict"] == "match" and row["published"] == [r, S, P]


@pytest.mark.skipif(not SHARED_CSV.is_file(), reason="../shared reference data not present")
def test_shared_reference_found_next_to_checkout(capsys):
    """Without --reference the command reads ../shared/reference/modern_networks_rf.csv."""
    _, out = run_table(capsys, "--format", "json", "--models", "alexnet_v2", "inception_v3")
    data = json.loads(out)
    assert Path(data["reference"]).resolve() == SHARED_CSV.resolve()
    assert [r["verdict"] for r in data["rows"]] == ["match", "match"]


@pytest.mark.skipif(not SHARED_CSV.is_file(), reason="../shared reference data not present")
def test_test_data_agrees_with_shared_reference():
    """The published numbers typed into these tests are the ones of the shared reference CSV."""
    from rfgraph.commands.table import load_reference
    ref = load_reference(SHARED_CSV)
    assert {m: v for (m, ep, res), v in ref.items() if ep is None and res is None} == PUBLISHED


def test_endpoint_rows_against_library_table(capsys, tmp_path):
    """--endpoints: one row per end point, each matched against resolution-specific reference rows
    (224 for the standard build, 321 for ``:size=321``)."""
    rows = [(m, ep, 224, *v) for m in ("resnet_v1_101", "inception_v2") for ep, v in ENDPOINTS_224[m].items()]
    rows += [("resnet_v1_50", ep, 321, *ENDPOINTS_224["resnet_v1_50"][ep][:2], P)
             for ep, P in P_AT_321["resnet_v1_50"].items()]
    ref = write_csv(tmp_path / "eps.csv", ["model", "end_point", "resolution", "r", "S", "P"], rows)
    code, out = run_table(capsys, "--endpoints", "--format", "json", "--reference", str(ref),
                          "--models", "resnet_v1_101", "inception_v2", "resnet_v1_50:size=321")
    got = json.loads(out)["rows"]
    assert code == 0 and len(got) == 4 + 15 + 4
    assert all(r["verdict"] == "match" for r in got), [r for r in got if r["verdict"] != "match"]


def test_other_input_size_shows_the_difference(capsys, published_csv):
    """Built at 321, resnet_v1_50 keeps r and S but P moves from the (224) published value."""
    code, out = run_table(capsys, "--format", "json", "--reference", str(published_csv),
                          "--models", "resnet_v1_50:size=321", "--fail-on-differ")
    (row,) = json.loads(out)["rows"]
    assert row["verdict"] == "differ (P)" and row["P"] == [P_AT_321["resnet_v1_50"]["resnet_v1_50/block4"]] * 2
    assert code == 1


def test_wrong_reference_number_is_reported(capsys, tmp_path):
    """A reference that disagrees shows 'differ' naming the quantity; exit 1 only when asked."""
    ref = write_csv(tmp_path / "bad.csv", ["model", "r", "S", "P"], [("vgg_16", 212, 32, 91)])
    code, out = run_table(capsys, "--models", "vgg_16", "--reference", str(ref))
    assert code == 0 and "differ (P)" in out and "1 rows: 0 match, 1 differ" in out
    code, _ = run_table(capsys, "--models", "vgg_16", "--reference", str(ref), "--fail-on-differ")
    assert code == 1


def test_partial_reference_luo_numbers(capsys, tmp_path):
    """A paper that gives r only (Luo et al.: CIFAR ResNet 74, CamVid front end 505 at 1/16):
    only the given quantities are compared; the CIFAR row differs (74 is odd-kernel-unreachable,
    see test_model_zoo), the CamVid row matches."""
    ref = write_csv(tmp_path / "luo.csv", ["model", "r", "S", "P"],
                    [("luo_cifar_resnet", 74, "", ""), ("luo_camvid_frontend", 505, 16, "None")])
    _, out = run_table(capsys, "--format", "json", "--reference", str(ref),
                       "--models", "luo_cifar_resnet", "luo_camvid_frontend")
    rows = {r["model"]: r for r in json.loads(out)["rows"]}
    assert rows["luo_cifar_resnet"]["verdict"] == "differ (r)"
    assert rows["luo_cifar_resnet"]["published"] == [74, None, None]
    assert rows["luo_camvid_frontend"]["verdict"] == "match"


def test_without_reference_no_verdicts(capsys):
    """--no-reference: the numbers print, verdicts are '-' and no published value is shown."""
    code, out = run_table(capsys, "--no-reference", "--format", "json", "--models", "alexnet_v2")
    (row,) = json.loads(out)["rows"]
    assert code == 0 and row["verdict"] == "-" and row["published"] is None
    assert json.loads(out)["reference"] is None


def test_csv_and_markdown_formats(capsys, published_csv):
    """CSV has the documented header and one line per row; Markdown is a pipe table."""
    _, out = run_table(capsys, "--format", "csv", "--reference", str(published_csv),
                       "--models", "vgg_16", "mobilenet_v1")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0][:7] == ["model", "family", "end point", "input", "r", "S", "P"]
    assert [r[0] for r in rows[1:]] == ["vgg_16", "mobilenet_v1"]
    assert all(r[rows[0].index("verdict")] == "match" for r in rows[1:])
    _, md = run_table(capsys, "--format", "markdown", "--reference", str(published_csv),
                      "--models", "vgg_16")
    assert md.splitlines()[0].startswith("| model") and "| match" in md


def test_unknown_model_is_a_usage_error(capsys):
    assert main(["table", "--models", "resnet_v9"]) == 2
    assert "unknown zoo model 'resnet_v9'" in capsys.readouterr().err


def test_missing_reference_file_is_a_usage_error(capsys, tmp_path):
    assert main(["table", "--reference", str(tmp_path / "nope.csv")]) == 2


def test_tf_slim_and_pytorch_conventions_side_by_side(capsys):
    """VGG-16 is the same in both conventions; ResNet-50 is not: torchvision strides in the first
    unit (r 427, not 483), and TF 'SAME' on the torchvision layout lowers P and misaligns."""
    _, out = run_table(capsys, "--no-reference", "--format", "json", "--models", "vgg_16",
                       "torch_vgg16", "resnet_v1_50", "torch_resnet50", "torch_resnet50:padding=SAME")
    rows = {r["model"]: r for r in json.loads(out)["rows"]}
    key = lambda m: (rows[m]["r"], rows[m]["S"], rows[m]["P"])
    assert key("vgg_16") == key("torch_vgg16")
    assert rows["torch_resnet50"]["r"] == [427, 427] and rows["resnet_v1_50"]["r"] != [427, 427]
    assert rows["torch_resnet50"]["P"] == [213, 213]
    assert rows["torch_resnet50:padding=SAME"]["P"] == [182, 182]
    assert "misaligned" in rows["torch_resnet50:padding=SAME"]["note"]
    assert rows["torch_resnet50"]["note"] == ""
