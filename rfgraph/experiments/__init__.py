"""Reproduction experiments of Luo et al. 2016 (ERF) and Araujo et al. 2019 (TRF), and beyond.

    from rfgraph.experiments import run_experiments
    results = run_experiments(["growth"], out="out/exp", quick=True)   # writes out/exp/report.md

Each experiment is one module registered in ``registry.EXPERIMENTS``; ``run_experiments`` runs them
in registry order, writes each one's PNG figures and CSV under ``OUT/NAME/`` and one
``OUT/report.md`` that sets every figure next to the paper's claim (match / differ / new).
"""

from __future__ import annotations

# registration order = run order (gaussianity summarises the maps of the experiments before it)
# isort: off
from . import (  # noqa: F401
    uniform_random_relu, nonlinearities, growth, subsample_dilation, skip_dropout, trained_vs_init,
    resnets_at_init, new_init, cnn_vs_transformer, gaussianity, rf_vs_accuracy,
)
# isort: on
from .registry import EXPERIMENTS
from .runner import run_experiments

__all__ = ["EXPERIMENTS", "run_experiments"]
