"""Luo et al. sec. 3.2 at initialisation: the CIFAR-10 ResNet (17 residual blocks, no downsampling)
and the CamVid front end (16 blocks, 4 subsamplings by 2) of ``model_zoo``: rfgraph's TRF next to
the reported 74x74 and 505x505, and the ERF of the centre output unit at He init next to the
reported "diameter ~100 at init" (the trained weights are not published, so only init is measured).

"Diameter" is read as Luo's ERF size (sqrt of the pixel count above (1 - 0.9545) x centre) and
also reported as the extent of those pixels and as the diameter of the disc of the same area.
"""

from __future__ import annotations

import math
import time
from typing import cast

import model_zoo

from .. import analyze
from . import plots
from .base import Context, Result, claim, finish, fmt, numeric_claim
from .measure import Measured, erf_of, record, trf_png
from .registry import register

NAME = "resnets-at-init"


def sizes(ctx: Context) -> dict[str, int]:
    """Input sides: CIFAR's 32; the CamVid net at 512 (> its TRF: the ERF is not clipped)."""
    return {"luo_cifar_resnet": 32, "luo_camvid_frontend": 128 if ctx.quick else 512}


def cifar_trf_explained() -> str:
    """Why 71 and not 74, with the control: the TRF of the plausible stems and depths, by rfgraph."""
    variants = {f"stem {k}, {n} blocks": trf("luo_cifar_resnet", 32, f"stem={k},blocks={n}")
                for k in (3, 5, 7) for n in (17, 18)}
    listed = ", ".join(f"{v}: r={r}" for v, r in variants.items())
    return (f"cause: 74 is even, and stride-1 nets of odd kernels only give odd r (r = 1 + sum(k - 1)); "
            f"control, the plausible variants measured: {listed}. The paper's 74 needs an even kernel, "
            "a stride or a pooling it does not describe (or a miscount); 71 is the standard 3x3-stem "
            "CIFAR ResNet's. The finding (TRF larger than the 32x32 image) stands either way")


def trf(name: str, side: int, params: str = "") -> int:
    """rfgraph's r (axis 0) at the net's output (``params``: more zoo parameters, "k=v,k2=v2")."""
    model = model_zoo.build(f"{name}:size={side}" + (f",{params}" if params else ""))
    r = analyze(model)[model_zoo.endpoints(model)[-1]].r[0]
    return int(cast(int, r))  # both nets end in a local (conv) field: r is never None


@register(NAME, "The paper's ResNets at init: TRF and ERF", "Luo et al. sec. 3.2")
def run(ctx: Context) -> Result:
    """TRF and He-init ERF of the two ResNets against the reported numbers."""
    t0 = time.perf_counter()
    runs = ctx.n_runs(20, 2)
    side = sizes(ctx)
    res = Result(NAME, "CIFAR ResNet and CamVid front end at init (sec. 3.2)",
                 f"16 channels, He init redrawn per run, {runs} runs; inputs "
                 + ", ".join(f"{k} {v}x{v}" for k, v in side.items()))
    folder = ctx.folder(NAME)
    found: dict[str, Measured] = {}
    for name in ctx.bar(list(side), NAME):
        m = found[name] = erf_of(ctx, model_zoo.build(f"{name}:size={side[name]}"), runs,
                                 redraw=True, seed=3)
        record(ctx, NAME, name, m)
        res.rows.append({"net": name, "input": side[name], "trf": trf(name, side[name]),
                         "runs": runs, "erf_size": m.metrics.erf_size,
                         "erf_extent": m.metrics.erf_extent[0],
                         "disc_diameter": 2 * math.sqrt(m.metrics.luo_count / math.pi),
                         "erf_trf": m.metrics.erf_trf_ratio, "gauss_sigma": m.sigma,
                         "gauss_r2": m.r2})
    fig = plots.heatmap_grid(folder / "erf_resnets_at_init.png",
                             [[found[n].erf for n in side]], ["He init"],
                             [f"{n} ({side[n]}x{side[n]})" for n in side], f"ERF, {runs} runs")
    res.figures = [str(fig.relative_to(ctx.out))]
    res.figures += [trf_png(ctx, folder / f"erf_trf_{n}.png", found[n],
                            f"{n} at init: ERF (log colours) and TRF box") for n in side]
    by = {r["net"]: r for r in res.rows}
    cif, cam = by["luo_cifar_resnet"], by["luo_camvid_frontend"]
    res.claims = [
        numeric_claim(ctx, "17 residual blocks", "CIFAR ResNet, 17 blocks: TRF", cif["trf"], 0,
                      digits=4, note=cifar_trf_explained()),
        claim(ctx, "17 residual blocks", "CIFAR ResNet at init: ERF does not fill the 32x32 image",
              f"ERF size {fmt(cif['erf_size'])} of 32; extent {cif['erf_extent']}",
              cif["erf_size"] < 32, res.figures[0]),
        numeric_claim(ctx, "16 residual blocks", "CamVid front end: TRF", cam["trf"], 0, digits=4),
    ]
    if not ctx.quick:
        sigma = cam["gauss_sigma"] or float("nan")
        res.claims += [numeric_claim(
            ctx, "16 residual blocks", "CamVid front end: ERF diameter at init, as Luo's size",
            cam["erf_size"], 0.3 * 100, index=2, figure=res.figures[0],
            note=f"cause: a different definition, not a different ERF. Luo's size (sec. 3.1: sqrt of the "
                 f"pixels above 4.55% of the centre) is about 4.4 sigma for a Gaussian (here "
                 f"{fmt(cam['erf_size'] / sigma)} sigma, sigma {fmt(sigma)}), while the 'diameter' of sec. 3.2 "
                 f"follows sec. 2.3's own reading, one std 'roughly the radius', i.e. 2 sigma: see the next "
                 f"row. Also: extent {cam['erf_extent']}, equal-area disc {fmt(cam['disc_diameter'])}; "
                 "tolerance 30"),
            numeric_claim(
            ctx, "16 residual blocks", "CamVid front end: ERF diameter at init, as 2 sigma (sec. 2.3's "
            "'one standard deviation ... roughly the radius')", 2 * sigma, 0.3 * 100, index=2,
            figure=res.figures[0],
            note="Gaussian fit of the same map; the control for the definition is the previous row (same "
                 "map, Luo's size); the zoo net has no normalisation and the paper's init and stem are not "
                 "stated, so the init may still differ from the paper's")]
    else:
        res.notes.append("quick mode: the CamVid net runs on 128x128, below its TRF, so its ERF "
                         "diameter is not compared with the paper")
    return finish(res, ctx, t0)
