"""Architecture diagnostics on top of the TRF pass (definitions: docs/diagnostics.md), one module
per topic:

* ``regions``: exact clipped fields (``exact_regions``): the input pixels every unit sees, with
  padding handled exactly; outer (union over paths) and inner (narrowest path) regions.
* ``coverage``: r against the input size per end point and axis, border and full-coverage
  layers, unproductive layers (``layers``, ``layer_verdicts``, ``coverage``).
* ``sizes``: the square input sizes where the end points cover the input and no layer is
  unproductive (``size_range``, re-analysing the model at each size).
* ``objects``: which object sizes fit inside a unit's TRF and the ERF extent (``object_fit``).
* ``alignment``: the smallest pad/crop fixing each misaligned merge (eqs. 12-13), and applying it.
* ``growth``: ERF/TRF ratio and the layer after which the ERF stops growing (``erf_growth``).
* ``diagnosis``: all of them at once (``diagnose`` -> ``Diagnosis``).

Everything is importable from ``rfgraph.diagnostics`` itself.
"""

from __future__ import annotations

from .alignment import AlignmentFix, alignment_fixes, apply_fixes
from .coverage import (
    UNPRODUCTIVE_FRACTION,
    WINDOW_OPS,
    AxisCoverage,
    Coverage,
    Layer,
    LayerVerdict,
    coverage,
    layer_verdicts,
    layers,
)
from .diagnosis import Diagnosis, check_counts, diagnose, without_static_shapes
from .growth import ERF_PLATEAU_TOL, ERFGrowth, ERFPoint, erf_growth, plateau_index
from .objects import ObjectFit, contained_fraction, object_fit
from .regions import AxisRegions, exact_regions, input_sizes, span_bounds, units_along
from .sizes import SizePoint, SizeRange, default_size_grid, size_range

__all__ = ["ERF_PLATEAU_TOL", "UNPRODUCTIVE_FRACTION", "WINDOW_OPS", "AlignmentFix", "AxisCoverage",
           "AxisRegions", "Coverage", "Diagnosis", "ERFGrowth", "ERFPoint", "Layer", "LayerVerdict",
           "ObjectFit", "SizePoint", "SizeRange", "alignment_fixes", "apply_fixes", "check_counts",
           "contained_fraction", "coverage", "default_size_grid", "diagnose", "erf_growth",
           "exact_regions", "input_sizes", "layer_verdicts", "layers", "object_fit", "plateau_index",
           "size_range", "span_bounds", "units_along", "without_static_shapes"]
