"""Limits on the work one command may do, so that a small file or an absurd argument is refused
with an estimate instead of exhausting memory or running for hours (issue 15 §2).

Each limit has a default sized for real models and an environment variable that raises it; the
refusal names both, and what the user can do instead."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import RFGraphError


class BudgetError(RFGraphError):
    """The work asked for exceeds a limit (exit 2, with the estimate and how to raise the limit)."""


@dataclass(frozen=True)
class Budget:
    """One limit: its environment variable, default and unit (for the message)."""

    env: str
    default: int
    unit: str

    def limit(self) -> int:
        """The limit in force: the environment variable when set, else the default."""
        raw = os.environ.get(self.env, "").strip()
        if not raw:
            return self.default
        try:
            value = int(float(raw))
        except ValueError:
            raise RFGraphError(f"{self.env}={raw!r} is not a number") from None
        if value < 1:
            raise RFGraphError(f"{self.env}={raw!r} must be a positive number")
        return value

    def check(self, needed: int, what: str, instead: str = "") -> None:
        """Refuse ``what`` when it needs more than the limit; ``instead``: a cheaper way to the same end."""
        limit = self.limit()
        if needed > limit:
            hint = f"{instead}, or raise" if instead else "raise"
            raise BudgetError(f"{what} needs {needed:,} {self.unit}, over the limit of {limit:,}; "
                              f"{hint} the limit with {self.env}={needed}")


BOX_UNITS = Budget("RFGRAPH_MAX_UNITS", 1 << 18, "units")
IMAGE_PIXELS = Budget("RFGRAPH_MAX_IMAGE_PIXELS", 1 << 26, "pixels")
SCAN_SIZE = Budget("RFGRAPH_MAX_SCAN_SIZE", 1 << 16, "input positions per axis")
SCAN_SECONDS = Budget("RFGRAPH_MAX_SCAN_SECONDS", 120, "seconds")
WEIGHT_BYTES = Budget("RFGRAPH_MAX_WEIGHT_BYTES", 8 << 30, "bytes")  # side-file bytes read for one model
RESIZE_PERIOD = Budget("RFGRAPH_MAX_RESIZE_PERIOD", 1 << 16, "output units in one period of the scale")

BIG_WEIGHT = 4096  # float initializers with more elements are never shape data (not a limit one raises)
