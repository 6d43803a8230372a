"""The table of experiments, in the order they run (gaussianity reads the maps of those before)."""

from __future__ import annotations

from collections.abc import Callable

from .base import Context, Experiment, Result

EXPERIMENTS: dict[str, Experiment] = {}


def register(name: str, title: str, source: str) -> Callable[[Callable[[Context], Result]],
                                                              Callable[[Context], Result]]:
    """Decorator adding ``run(ctx) -> Result`` to ``EXPERIMENTS`` under ``name``."""
    def deco(fn: Callable[[Context], Result]) -> Callable[[Context], Result]:
        """Register ``fn`` and return it unchanged."""
        EXPERIMENTS[name] = Experiment(name, title, source, fn)
        return fn
    return deco
