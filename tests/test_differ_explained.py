"""Every "differ" row of the experiments report says its cause, from evidence (issue 18 §2).

- CIFAR ResNet TRF 71 vs the paper's 74: the control lists rfgraph's r of the plausible stems and
  depths; each must equal the closed form stem + 4 x blocks (Araujo eq. 2, stride 1), all odd.
- trained vs init: the cause is read from the three maps (init, trained, shuffled control):
  noise, the weights' scale, or their learned spatial structure; synthetic maps of known r50 pick
  each branch.
"""

from __future__ import annotations

import re

import numpy as np

from rfgraph.experiments.measure import Measured
from rfgraph.experiments.resnets_at_init import cifar_trf_explained
from rfgraph.experiments.trained_vs_init import r50, why_not_grown
from rfgraph.metrics import compute_metrics


def test_cifar_trf_control_lists_closed_form_odd_fields() -> None:
    note = cifar_trf_explained()
    found = re.findall(r"stem (\d+), (\d+) blocks: r=(\d+)", note)
    assert len(found) == 6
    for stem, blocks, r in found:
        assert int(r) == int(stem) + 4 * int(blocks) and int(r) % 2 == 1
    assert "74 is even" in note and "r=71" in note


def square_map(side: int, size: int = 129) -> Measured:
    """A flat square of ``side`` pixels at the centre: its half-mass square is about ``side``."""
    erf = np.zeros((size, size))
    lo = (size - side) // 2
    erf[lo:lo + side, lo:lo + side] = 1.0
    return Measured(erf, compute_metrics(erf, (size // 2, size // 2), (size, size)), 1, 0.0)


def test_why_not_grown_picks_the_cause_from_the_control() -> None:
    init, small = square_map(61), square_map(31)
    assert r50(small) < r50(init)
    assert "noise" in why_not_grown(init, square_map(59), square_map(45))
    assert "spatial structure" in why_not_grown(init, small, square_map(59))
    assert "finding stands" in why_not_grown(init, small, square_map(59))
    assert "scale" in why_not_grown(init, small, square_map(33))
