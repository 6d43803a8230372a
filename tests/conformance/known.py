"""What the conformance suite knows is not right yet, each with the reason and the area that owns
the fix (so the fast subset stays green while the list can only shrink)."""

from __future__ import annotations

# case name -> reason (owner).  A case listed here that passes makes the fast subset fail.
KNOWN_FAILURES: dict[str, str] = {}

# ops with a rule but no conformance case yet (the completeness test fails on any other)
UNCOVERED: dict[str, str] = {}
