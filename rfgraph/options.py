"""How a model is read, as one value: ``ModelOptions`` (input shapes, the input the fields refer
to, its layout, declared rules, the assume-pointwise fallback, constant fills).

``analyze``, ``compute_erf(s)``, ``diagnose`` and every command take it; the commands build it
once from their arguments (``commands._common.model_options``).  The entry points keep their
older keywords (``analyze(model, input_shape=..., layout=...)``): each keyword given overrides
the field of ``options`` (``ModelOptions.merged``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from .errors import RFGraphError

if TYPE_CHECKING:
    from .custom_ops import RuleSet

Rules = Union["RuleSet", str, Path, Sequence[str | Path], None]


@dataclass(frozen=True)
class ModelOptions:
    """How to read a model.

    ``input_shapes`` fixes input dims ({"x": (1, 3, 224, 224)}; name "" means the first input);
    ``input_name`` picks the input the fields refer to (the ERF differentiates); ``layout``
    ("NCHW", "NHWC", "NCL"...) overrides the inferred position of the spatial axes; ``rules`` (a
    TOML rules file, several, or a ``custom_ops.RuleSet``) declares ops rfgraph does not know;
    ``assume_pointwise`` treats other unknown ops that keep the spatial shape as pointwise;
    ``fill`` gives other inputs a constant value ({"sr": 16000}).
    """

    input_shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)  # stored as tuples
    input_name: str | None = None
    layout: str | None = None
    rules: Rules = None
    assume_pointwise: bool = False
    fill: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Own copies of the mappings (a caller's dict changed later does not change the value)."""
        object.__setattr__(self, "input_shapes", {n: tuple(int(d) for d in s)
                                                  for n, s in (self.input_shapes or {}).items()})
        object.__setattr__(self, "fill", dict(self.fill or {}))

    def merged(self, *, input_shapes: Mapping[str, Sequence[int]] | None = None,
               input_name: str | None = None, layout: str | None = None, rules: Rules = None,
               assume_pointwise: bool | None = None,
               fill: Mapping[str, float] | None = None) -> ModelOptions:
        """This value with every keyword that is given (not None) replacing its field: the
        entry points' older keywords on top of their ``options``."""
        given: dict[str, Any] = {"input_shapes": input_shapes, "input_name": input_name, "layout": layout,
                                 "rules": rules, "assume_pointwise": assume_pointwise, "fill": fill}
        changes = {k: v for k, v in given.items() if v is not None}
        return replace(self, **changes) if changes else self

    def with_shapes(self, input_shapes: Mapping[str, Sequence[int]] | None) -> ModelOptions:
        """The same options at other input shapes (None: those the file declares)."""
        return replace(self, input_shapes=input_shapes or {})

    def erf_input(self) -> tuple[str | None, tuple[int, ...] | None]:
        """The input an ERF differentiates (``input_name``, else the one input ``input_shapes``
        names, else the first) and its shape; a shape for any other input is refused (the ERF is
        taken w.r.t. one input, the others keep their declared shapes)."""
        shapes, name = self.input_shapes, self.input_name
        if name is None and len(shapes) == 1 and "" not in shapes:
            name = next(iter(shapes))
        other = [n for n in shapes if n not in ("", name)]
        if other:
            raise RFGraphError(f"--input-shape names '{other[0]}', but the ERF is taken w.r.t. one input "
                               f"({name or 'the first'}): give only its shape (--input NAME chooses it)")
        shape = shapes.get(name or "", shapes.get(""))
        return name, None if shape is None else tuple(shape)


def model_options(options: ModelOptions | None = None, **keywords: Any) -> ModelOptions:
    """``options`` (default: all defaults) with the given keywords on top (``ModelOptions.merged``)."""
    return (options or ModelOptions()).merged(**keywords)
