"""Reshape idioms of real exports, tracked exactly: window partition and reverse (Swin, MaxViT),
pixel_unshuffle written as Reshape + Transpose, bytes folded into channels, a ViT's class token.

Tiny torch models exported with the TorchScript exporter; every unit's region of the checked
tensors is compared with onnxruntime impulses (tests/impulses.py).  Each stopped before
("Reshape ... splits a spatial axis across output dims").
"""

from __future__ import annotations

import io
import itertools
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import pytest

import rfgraph
from tests.impulses import check_tensor

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
F = torch.nn.functional


def export(module: torch.nn.Module, shape: tuple[int, ...], opset: int = 17) -> onnx.ModelProto:
    """The module exported to ONNX (input 'x', output 'y'), shapes inferred."""
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.onnx.export(module.eval(), torch.randn(*shape), buf, dynamo=False, opset_version=opset,
                      input_names=["x"], output_names=["y"])
    return onnx.shape_inference.infer_shapes(onnx.load_from_string(buf.getvalue()))


class WindowAttention(torch.nn.Module):
    """Swin's window partition, attention inside each window, window reverse (NCHW in and out)."""

    def __init__(self, ws: int = 2, c: int = 3) -> None:
        super().__init__()
        self.ws, self.q, self.k = ws, torch.nn.Linear(c, c), torch.nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ws = self.ws
        x = x.permute(0, 2, 3, 1)
        win = x.reshape(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
        att = torch.softmax(self.q(win) @ self.k(win).transpose(1, 2), -1) @ win
        out = att.reshape(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return out.permute(0, 3, 1, 2)


class PatchThenWindows(torch.nn.Module):
    """A stem conv (3x3, stride 1) then window attention: the field is the window's hull of the
    stem's fields, a periodic (non-affine) span."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.win = torch.nn.Conv2d(2, 3, 3, padding=1), WindowAttention(ws=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.win(self.stem(x))


def test_window_partition_attention_reverse_is_local_and_exact() -> None:
    """Each unit sees exactly its window (r = ws along each axis, S = 1), measured."""
    proto = export(WindowAttention(), (1, 3, 8, 8))
    a = rfgraph.analyze(proto, layout="NCHW")
    assert not a.stops and not a["y"].is_global
    assert a["y"].r == (2, 2) and a["y"].S == (1, 1)
    assert check_tensor(a, proto, "y") == 64


def test_windows_after_a_stem_conv() -> None:
    proto = export(PatchThenWindows(), (1, 2, 9, 9))
    a = rfgraph.analyze(proto, layout="NCHW")
    assert not a.stops and a["y"].r == (5, 5)
    assert check_tensor(a, proto, "y") == 81


class UnshuffleByHand(torch.nn.Module):
    """pixel_unshuffle(2) written as Reshape + Transpose + Reshape, then a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
        return self.conv(y)


class Unshuffle(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pixel_unshuffle(x, 2))


@pytest.mark.parametrize("module", [UnshuffleByHand, Unshuffle])
def test_pixel_unshuffle_is_a_block(module: type) -> None:
    """Like SpaceToDepth: unit u reads the block [2u, 2u+1] (then the conv's window)."""
    proto = export(module(), (1, 2, 8, 8))
    a = rfgraph.analyze(proto, layout="NCHW")
    want = (2, 2) if module is UnshuffleByHand else (6, 6)
    assert not a.stops and a["y"].r == want and a["y"].S == (2, 2)
    assert check_tensor(a, proto, "y") == 16


class ByteFold(torch.nn.Module):
    """A 1-D model reading 4 bytes per step: [N, L] -> [N, L/4, 4] -> channels -> Conv1d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length = x.shape
        return self.conv(x.reshape(n, length // 4, 4).transpose(1, 2))


def test_bytes_folded_into_channels() -> None:
    proto = export(ByteFold(), (1, 32))
    a = rfgraph.analyze(proto, layout="NL")
    assert not a.stops and a["y"].r == (12,) and a["y"].S == (4,) and a["y"].P == (4,)
    assert check_tensor(a, proto, "y") == 8


class TinyViT(torch.nn.Module):
    """Patch conv, flatten, class token, position embedding, one attention block, head."""

    def __init__(self, c: int = 4, p: int = 4, n: int = 4) -> None:
        super().__init__()
        self.patch = torch.nn.Conv2d(2, c, p, stride=p)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, c))
        self.pos = torch.nn.Parameter(torch.randn(1, 1 + n * n, c))
        self.att = torch.nn.MultiheadAttention(c, 1, batch_first=True)
        self.head = torch.nn.Linear(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1) + self.pos
        t = t + self.att(t, t, t, need_weights=False)[0]
        return self.head(t[:, 0])


def test_vit_with_a_class_token_reaches_its_output() -> None:
    """The stem is local (the patch: r = S = 4, measured); the class-token Concat and the
    attention make the output global (measured: both ends of the input move it).  Stopped before."""
    proto = export(TinyViT(), (1, 2, 16, 16))
    a = rfgraph.analyze(proto, layout="NCHW")
    assert not a.stops and a["y"].is_global
    stem = next(n for n in a.endpoints if a[n].op == "Conv")
    assert a[stem].r == (4, 4) and a[stem].S == (4, 4)
    check_tensor(a, proto, stem)
    check_tensor(a, proto, "y")


class Roll(torch.nn.Module):
    """Swin's cyclic shift (torch.roll: Slice + Concat of two pieces of the same tensor)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, shifts=(-1, -1), dims=(2, 3))


def test_roll_is_an_upper_bound() -> None:
    """A roll sends the border units to the far side: reported as the whole input, which holds
    every measured dependency (stopped before)."""
    proto = export(Roll(), (1, 1, 5, 5))
    a = rfgraph.analyze(proto, layout="NCHW")
    assert not a.stops and a["y"].is_global


class UpsampleMerge(torch.nn.Module):
    """An FPN merge: a lateral 3x3 conv plus a stride-2 conv upsampled by nearest x2."""

    def __init__(self) -> None:
        super().__init__()
        self.down, self.lateral = torch.nn.Conv2d(2, 2, 3, stride=2, padding=1), torch.nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lateral(x) + F.interpolate(self.down(x), scale_factor=2, mode="nearest")


def test_upsampling_merge_names_the_phases_that_differ(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """Both branches print S=1 and centre 0 at unit 0; what differs is the odd units' centre.
    The printed centre offsets per phase are those measured on each branch (before: no phases)."""
    from rfgraph.cli import main
    from tests.impulses import dependencies, measured_hulls

    proto = export(UpsampleMerge(), (1, 2, 12, 12))
    a = rfgraph.analyze(proto, layout="NCHW")
    merge = next(m for m in a.misaligned if m.axis == 0)
    for branch in merge.branches:
        deps, _ = dependencies(proto, "x", branch.tensor, [2, 3])
        for u in (4, 5):  # interior units, one per phase
            lo, hi = measured_hulls(deps, 2, (slice(None), slice(None), u, 6))[0]
            assert branch.phases[u % 2] == Fraction(lo + hi, 2) - u * branch.S
    assert merge.branches[0].phases != merge.branches[1].phases
    path = tmp_path / "up.onnx"
    onnx.save(proto, str(path))
    main(["analyze", str(path), "--layout", "NCHW"])
    assert "centre-u*S by u mod 2: 0, -1" in capsys.readouterr().out


class Focus(torch.nn.Module):
    """YOLOv5's Focus: four strided Slices (a space-to-depth) concatenated, then a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1))


def test_focus_is_an_aligned_block_like_a_2x2_stride_2_conv() -> None:
    """Aligned (it was 'misaligned', and diagnose advised a padding change); its field is that
    of a 2x2 stride-2 conv, unit by unit, and both match onnxruntime impulses."""
    proto = export(Focus(), (1, 2, 8, 8))
    a = rfgraph.analyze(proto, layout="NCHW")
    assert a.aligned and a["y"].aligned and not a.misaligned
    conv_proto = export(torch.nn.Conv2d(2, 3, 2, stride=2), (1, 2, 8, 8))
    conv = rfgraph.analyze(conv_proto, layout="NCHW")
    assert (a["y"].boxes() == conv["y"].boxes()).all()
    assert check_tensor(a, proto, "y") == 16
    assert check_tensor(conv, conv_proto, "y") == 16
    from rfgraph.diagnostics import alignment_fixes
    assert alignment_fixes(a) == []


class PatchMerging(torch.nn.Module):
    """Swin's patch merging: each 2x2 block's rows folded into the channels, then LayerNorm and
    a Linear over them: a block field (r = S = 2), not a global one."""

    def __init__(self, c: int = 2) -> None:
        super().__init__()
        self.norm, self.proj = torch.nn.LayerNorm(4 * c), torch.nn.Linear(4 * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = x.permute(0, 2, 3, 1).reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5)
        return self.proj(self.norm(y.reshape(b, h // 2, w // 2, 4 * c))).permute(0, 3, 1, 2)


def test_patch_merging_is_a_block() -> None:
    proto = export(PatchMerging(), (1, 2, 8, 8))
    a = rfgraph.analyze(proto, layout="NCHW")
    assert not a.stops and a["y"].r == (2, 2) and a["y"].S == (2, 2) and not a["y"].is_global
    assert check_tensor(a, proto, "y") == 16


def test_constant_folding_runs_each_op_at_the_files_opset() -> None:
    """Unsqueeze with an ``axes`` attribute (opset <= 12) folds: the reference evaluator ran a bare
    node as Unsqueeze-13 and refused the attribute, so ddddocr's (opset 12) Reshape targets built
    from Shape -> Gather -> Unsqueeze -> Concat stayed unknown and the analysis stopped there."""
    import numpy as np
    from onnx import helper

    from rfgraph.onnx_import import _run_node

    node = helper.make_node("Unsqueeze", ["a"], ["b"], axes=[0])
    assert _run_node(node, [np.array(32, np.int64)], 12, "b").tolist() == [32]
    node13 = helper.make_node("Unsqueeze", ["a", "axes"], ["b"])
    assert _run_node(node13, [np.array(32, np.int64), np.array([0], np.int64)], 13, "b").tolist() == [32]


class ShuffledBack(torch.nn.Module):
    """pixel_unshuffle, a 1x1 conv, pixel_shuffle back, a shortcut, then a 3x3 conv: the rows
    within each block come back as a fine axis (the block's unit, two elements a unit)."""

    def __init__(self) -> None:
        super().__init__()
        self.mix, self.conv = torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape  # pixel_unshuffle and pixel_shuffle by hand (Reshape + Transpose)
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
        y = self.mix(y).reshape(b, c, 2, 2, h // 2, w // 2).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h, w)
        return self.conv(y + x)


def test_a_conv_slides_over_rows_shuffled_back() -> None:
    """Unit h reads the blocks of rows h-1..h+1: [2*((h-1)//2), 2*((h+1)//2) + 1], measured on
    every unit (stopped before: a sliding window over a flattened axis)."""
    proto = export(ShuffledBack(), (1, 2, 8, 8))
    a = rfgraph.analyze(proto, layout="NCHW")
    assert not a.stops and not a["y"].is_global
    assert [a["y"].region((h, h))[0] for h in range(8)] == [(2 * ((h - 1) // 2), 2 * ((h + 1) // 2) + 1)
                                                            for h in range(8)]
    assert check_tensor(a, proto, "y") == 64
    back = a.graph.nodes[a.graph.producer["/Add_output_0"]].input[0]  # the rows put back: each its block
    assert a[back].units == (8, 8) and a[back].r == (2, 2) and a[back].S == (1, 1)
    assert check_tensor(a, proto, back) == 64


class RowOfEachWindow(torch.nn.Module):
    """Rows split into windows of 2; one row of each kept; back to a grid; a 3x3 conv."""

    def __init__(self, row: int = 1) -> None:
        super().__init__()
        self.row, self.conv = row, torch.nn.Conv2d(1, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        rows = x.reshape(b, c, h // 2, 2, w)[:, :, :, self.row:self.row + 1, :]
        return self.conv(rows.reshape(b, c, h // 2, w))


@pytest.mark.parametrize("row", [0, 1])
def test_a_slice_within_windows_reads_its_row(row: int) -> None:
    """Unit k reads row 2k + row (S = 2), then the conv's window: r = 5, measured on every unit.
    Before, the slice was applied to the whole axis as a shift (row 1: S = 1, r = 3) or not at
    all (row 0, a crop of the end): wrong numbers."""
    proto = export(RowOfEachWindow(row), (1, 1, 12, 8))
    a = rfgraph.analyze(proto, layout="NCHW")
    assert not a.stops and a["y"].r == (5, 3) and a["y"].S == (2, 1) and a["y"].P == (-row, 0)
    assert check_tensor(a, proto, "y") == 24


class EinsumWindowAttention(WindowAttention):
    """The same window attention written with Einsum (as torchvision's MaxViT does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ws = self.ws
        x = x.permute(0, 2, 3, 1)
        win = x.reshape(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, -1, ws * ws, c)
        scores = torch.softmax(torch.einsum("bgid,bgjd->bgij", self.q(win), self.k(win)), -1)
        att = torch.einsum("bgij,bgjd->bgid", scores, win)
        out = att.reshape(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return out.permute(0, 3, 1, 2)


def test_window_attention_by_einsum_is_local_like_matmul() -> None:
    """Each unit sees its window, as with MatMul (was global: two output letters held positions)."""
    proto = export(EinsumWindowAttention(), (1, 3, 8, 8))
    a = rfgraph.analyze(proto, layout="NCHW")
    assert not a.stops and not a["y"].is_global
    assert a["y"].r == (2, 2) and a["y"].S == (1, 1)
    assert check_tensor(a, proto, "y") == 64


class PooledTokenFirst(torch.nn.Module):
    """CaiT's class attention: a token computed from every patch concatenated before the patch
    tokens, then split into heads."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.patch, self.k = torch.nn.Conv2d(2, c, 4, stride=4), torch.nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        u = torch.cat([t.mean(1, keepdim=True), t], dim=1)
        b, n, c = u.shape
        return self.k(u).reshape(b, n, 2, c // 2).sum(-1)


def test_a_pooled_token_before_the_patches() -> None:
    """The tokens axis is 1 + 16 long: reported as the whole input, an upper bound that every
    token but the pooled one's neighbours... holds (measured: the output reaches both ends).
    Before: the patch grid's layout (16 units) was kept for 17 tokens, and the pass stopped at
    the Reshape with a wrong reason."""
    proto = export(PooledTokenFirst(), (1, 2, 16, 16))
    a = rfgraph.analyze(proto, layout="NCHW")
    assert not a.stops and a["y"].is_global
    assert any("upper bound" in why for why in a.global_at.values())
    check_tensor(a, proto, "y")


def test_a_rule_that_loses_count_of_positions_stops_the_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule whose layout holds more units than its tensor has (a defect) stops the pass at its
    node with a message saying so, instead of handing a wrong field downstream."""
    from rfgraph import semantics
    from rfgraph.semantics.transfer import Edge, OutTransfer, Transfer

    def lossy(ctx: object) -> Transfer:
        lay = ctx.data_layout(0)  # type: ignore[attr-defined]
        wrong = lay[:2] + tuple(((a, n + 1),) for (a, n), in lay[2:])
        return Transfer((OutTransfer(wrong, (Edge(0),)),))

    monkeypatch.setitem(semantics.TRF_RULES, "Relu", lossy)
    proto = export(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3), torch.nn.ReLU()), (1, 1, 8, 8))
    a = rfgraph.analyze(proto, layout="NCHW")
    assert [s.op for s in a.stops] == ["Relu"] and "lost count of the positions" in a.stops[0].reason


def test_global_fields_are_named_where_they_begin() -> None:
    """After the first attention every token is global: the second attention is not listed as
    making it so (it was, and so was each later block of a ViT)."""
    class Two(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = torch.nn.Conv2d(2, 4, 4, stride=4)
            self.a1 = torch.nn.MultiheadAttention(4, 1, batch_first=True)
            self.a2 = torch.nn.MultiheadAttention(4, 1, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.patch(x).flatten(2).transpose(1, 2)
            t = t + self.a1(t, t, t, need_weights=False)[0]
            return t + self.a2(t, t, t, need_weights=False)[0]

    a = rfgraph.analyze(export(Two(), (1, 2, 16, 16)), layout="NCHW")
    assert a["y"].is_global and a.global_at and all("a2" not in node for node in a.global_at)
    assert any("a1" in node for node in a.global_at)


class RowsReversedInWindows(torch.nn.Module):
    """Rows split into windows of 4, reversed within each window, back to a grid, pooled."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return F.avg_pool2d(x.reshape(b, c, h // 4, 4, w).flip(3).reshape(b, c, h, w), (2, 1))


def test_a_flip_within_windows_stops_rather_than_misreport() -> None:
    """Unit 2 reads rows 6-7 (measured); a reversal inside each window has no monotone map over
    the whole axis, so the pass stops there, naming it.  Before: unit 2 was reported to read row 0."""
    proto = export(RowsReversedInWindows(), (1, 1, 8, 4))
    a = rfgraph.analyze(proto, layout="NCHW")
    assert [s.op for s in a.stops] == ["Slice"] and "reverses one part" in a.stops[0].reason


class PatchesFoldedBack(torch.nn.Module):
    """MobileViTv2's unfold: [B, C, H, W] -> [B, C, ph*pw, patches] by Reshape + Transpose, a 1x1
    conv over that map (each pixel of each patch apart), the fold back, then a 3x3 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.mix, self.conv = torch.nn.Conv2d(2, 2, 1), torch.nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c, 4, h * w // 4)
        y = self.mix(p).reshape(b, c, 2, 2, h // 2, w // 2).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h, w)
        return self.conv(y)


def test_positions_folded_into_patches_and_back_are_an_upper_bound_that_says_so() -> None:
    """After the unfold each patch holds its 4 pixels as features, so after the fold each pixel is
    given its patch's field: every measured region lies inside the reported one, some strictly,
    and the end point and the report name the node from which the field is an upper bound (it
    was reported as exact; the pass stopped at the 3x3 conv before this session's fine axes).
    Mixed by a 1x1 conv over the channels instead (pixel shuffle, ``ShuffledBack``), the same
    fold is exact and carries no bound."""
    from tests.impulses import dependencies, measured_hulls

    proto = export(PatchesFoldedBack(), (1, 2, 8, 8))
    a = rfgraph.analyze(proto, layout="NCHW")
    ep = a["y"]
    assert not a.stops and ep.bound_at is not None and ep.bound_at in a.bounds
    deps, _ = dependencies(proto, "x", "y", [2, 3])
    strict = 0
    for h, w in itertools.product(range(8), range(8)):
        got = measured_hulls(deps, 2, (slice(None), slice(None), h, w))
        want = [(max(u0, 0), min(v0, 7)) for u0, v0 in ep.region((h, w))]
        assert all(g[0] >= u[0] and g[1] <= u[1] for g, u in zip(got, want))
        strict += got != want
    assert strict > 0
    assert rfgraph.analyze(export(ShuffledBack(), (1, 2, 8, 8)), layout="NCHW")["y"].bound_at is None


def test_the_erf_says_when_its_trf_is_an_upper_bound(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rfgraph.cli import main
    onnx.save(export(PatchesFoldedBack(), (1, 2, 8, 8)), tmp_path / "m.onnx")
    assert main(["erf", str(tmp_path / "m.onnx"), "--runs", "1", "--layout", "NCHW"]) == 0
    assert "TRF of 'y' is an upper bound from" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "m.onnx"), "--output", "y", "--no-erf", "--layout", "NCHW",
                 "-o", str(tmp_path / "m.png"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["upper_bound_from"] == "/Reshape_3"


class TokenPool(torch.nn.Module):
    """A 1-D average pool over the flattened tokens of an 8x8 grid (NextViT's key/value
    reduction), then a 1x1 conv."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.pool, self.proj = torch.nn.AvgPool1d(k, k), torch.nn.Conv1d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x.flatten(2)))


@pytest.mark.parametrize(("k", "r", "S"), [(2, (1, 2), (1, 2)), (16, (2, None), (2, None))])
def test_a_pool_over_flattened_tokens_in_whole_blocks(k: int, r: tuple, S: tuple) -> None:
    """k = 2 pools pairs of columns (r = (1, 2)); k = 16 pools two whole rows of 8: every column
    (global along W, named) and rows 2j, 2j + 1.  Measured on every token (stopped before: a
    sliding window over a flattened axis)."""
    proto = export(TokenPool(k), (1, 2, 8, 8))
    a = rfgraph.analyze(proto, layout="NCHW")
    assert not a.stops and a["y"].r == r and a["y"].S == S
    assert (k == 16) == any("whole rows" in why for why in a.global_at.values())
    assert check_tensor(a, proto, "y") == 64 // k


class UnfoldPatches(torch.nn.Module):
    """torch's unfold (exported as Gathers of constant rows: [k offsets, m blocks] per axis) into
    4x4 patches, a linear embedding of each, back to a grid, then a 3x3 conv (TNT's pixel
    embedding, a patch embedding written with unfold)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.conv = torch.nn.Linear(2 * 16, 3), torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        tokens = self.embed(F.unfold(x, 4, stride=4).transpose(1, 2))
        return self.conv(tokens.transpose(1, 2).reshape(b, 3, h // 4, w // 4))


def halo_windows() -> onnx.ModelProto:
    """Overlapping windows cut by Gathers, as the dynamo exporter writes torch's unfold(8, step 4)
    (HaloNet's keys: each block of 4 rows with a halo of 2 on either side): indices [m blocks,
    k offsets] per axis, the offsets moved to the channels, a 1x1 conv over each window."""
    from onnx import TensorProto, helper, numpy_helper
    rows = np.array([range(0, 8), range(4, 12)], np.int64)
    nodes = [helper.make_node("Gather", ["x", "rows"], ["h"], axis=2),  # (1, 2, 2, 8, 12)
             helper.make_node("Gather", ["h", "rows"], ["hw"], axis=4),  # (1, 2, 2, 8, 2, 8)
             helper.make_node("Transpose", ["hw"], ["t"], perm=[0, 1, 3, 5, 2, 4]),
             helper.make_node("Reshape", ["t", "shape"], ["win"]), helper.make_node("Conv", ["win", "w"], ["y"])]
    inits = {"rows": rows, "shape": np.array([1, 128, 2, 2], np.int64),
             "w": np.random.default_rng(0).standard_normal((3, 128, 1, 1)).astype(np.float32)}
    graph = helper.make_graph(nodes, "halo", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_overlapping_windows_by_gathers_keep_the_blocks() -> None:
    """Two windows of 8 rows, 4 apart: each block reads its 8 rows, r = 8, S = 4, P = 0, measured
    on every unit.  The offsets (rows o and o + 4) were kept as the positions, being the narrower
    (4 rows apart against 8), and the blocks folded: the conv over the channels then read them all
    (global)."""
    proto = halo_windows()
    a = rfgraph.analyze(proto, layout="NCHW")
    assert not a.stops and not a.global_at and a["y"].r == (8, 8) and a["y"].S == (4, 4) and a["y"].P == (0, 0)
    assert check_tensor(a, proto, "y") == 4


def test_unfold_by_gathers_is_a_patch_embedding() -> None:
    """Block u reads rows 4u..4u+3: with the conv, r = 12, S = 4, P = 4, measured on every unit
    (was global: "Gather with run-time or several indices along a spatial axis")."""
    proto = export(UnfoldPatches(), (1, 2, 16, 16))
    assert "Gather" in {n.op_type for n in proto.graph.node}
    a = rfgraph.analyze(proto, layout="NCHW")
    assert not a.stops and a["y"].r == (12, 12) and a["y"].S == (4, 4) and a["y"].P == (4, 4)
    assert check_tensor(a, proto, "y") == 16


class ScatteredRows(torch.nn.Module):
    """Rows 2-3 of a feature map overwritten in place by a conv's (exported as ScatterND)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y[:, :, 2:4] = self.conv(x)[:, :, 2:4]
        return y * 2


def test_scatter_reads_its_updates_whole_an_upper_bound_that_says_so() -> None:
    """Every measured dependency lies inside the reported field (global, an upper bound named as
    such); the pass stopped at ScatterND before (MViTv2's relative positions)."""
    proto = export(ScatteredRows(), (1, 1, 6, 6))
    assert "ScatterND" in {n.op_type for n in proto.graph.node}
    a = rfgraph.analyze(proto, layout="NCHW")
    assert not a.stops and a["y"].is_global
    assert any("ScatterND" in why and "upper bound" in why for why in a.global_at.values())
    from tests.impulses import dependencies, measured_hulls
    deps, _ = dependencies(proto, "x", "y", [2, 3])
    rows = [measured_hulls(deps, 2, (0, 0, h, 0))[0] for h in range(6)]
    assert rows[0] == (0, 0) and rows[2] == (1, 3)  # inside the whole input (0, 5), as reported


class Circular(torch.nn.Module):
    """Convolutions with padding_mode='circular' (exported as Concat(x[n-p:], x, x[:p]) along
    each axis): 1-D dilated, as brainmaze's EEG spindle detector, or 2-D."""

    def __init__(self, dims: int, mode: str = "circular") -> None:
        super().__init__()
        conv = torch.nn.Conv1d if dims == 1 else torch.nn.Conv2d
        self.a = conv(1, 2, 3, padding=1, padding_mode=mode)
        self.b = conv(2, 2, 3, padding=2, dilation=2, padding_mode=mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


@pytest.mark.parametrize("shape", [(1, 1, 11), (1, 1, 7, 6)], ids=["1d", "2d"])
def test_circular_padding_is_a_wrap_pad(shape: tuple[int, ...]) -> None:
    """torch's circular padding is a wrap Pad: r, S, P those of the zero-padded twin, and each
    border unit's box (clipped to the input) takes in the pixels wrapped from the far side.  It
    was reported as the whole input ("Concat of several input-dependent pieces"), an upper bound
    that left a dilated 1-D net global from its first layer.  Oracle: onnxruntime impulses."""
    dims = len(shape) - 2
    proto = export(Circular(dims), shape)
    a = rfgraph.analyze(proto, layout="NCL" if dims == 1 else "NCHW")
    twin = rfgraph.analyze(export(Circular(dims, "zeros"), shape), layout="NCL" if dims == 1 else "NCHW")
    assert not a.global_at and (a["y"].r, a["y"].S, a["y"].P) == (twin["y"].r, twin["y"].S, twin["y"].P)
    assert check_tensor(a, proto, "y") == int(np.prod(shape[2:]))
    assert a["y"].clipped_region((0,) * dims, shape[2:])[0] == (0, shape[2] - 1)  # wraps to the far side
