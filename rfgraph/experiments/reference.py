"""The papers' numbers, read at run time from the reference data (never stored in the package).

Where from: ``--reference DIR`` (a ``shared`` folder, or its ``reference`` subfolder), else the
``RFGRAPH_REFERENCE`` environment variable, else ``../shared`` next to the repository or the
working directory.  Read: ``reference/luo2016_claims.md`` (claims table), ``reference/
modern_networks_rf.csv`` (Araujo et al.'s r, S, P) and the ImageNet accuracy table of
``seeds/araujo2019_*.txt``.  Missing files leave the tables empty; the report then says so.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

CLAIMS_FILE = "luo2016_claims.md"
NETWORKS_FILE = "modern_networks_rf.csv"
ACCURACY_HEADER = "ImageNet top-1 accuracy\tFamily"  # header line of the Araujo accuracy table
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Reference:
    """Tables of the papers: Luo's claims, Araujo's modern networks (r, S, P) and accuracies."""

    root: Path | None
    claims: tuple[tuple[str, str, str], ...] = ()  # (claim, value in the paper, where)
    networks: dict[str, dict[str, int]] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> Reference:
        """No reference data: every paper value is missing."""
        return cls(None)

    @property
    def available(self) -> bool:
        """True when the claims table was found."""
        return bool(self.claims)

    def paper(self, key: str) -> str:
        """The paper's value of the first claim whose text contains ``key`` ("" if none)."""
        row = self.row(key)
        return row[1] if row else ""

    def where(self, key: str) -> str:
        """Where in the paper claim ``key`` is made ("" if unknown)."""
        row = self.row(key)
        return row[2] if row else ""

    def row(self, key: str) -> tuple[str, str, str] | None:
        """The claims-table row whose claim text contains ``key`` (case-insensitive)."""
        key = key.lower()
        return next((r for r in self.claims if key in r[0].lower()), None)

    def numbers(self, key: str) -> list[float]:
        """The numbers in the paper's value of claim ``key``, in order (empty when absent)."""
        return [float(x) for x in _NUMBER.findall(self.paper(key))]


def find_root(explicit: str | Path | None = None) -> Path | None:
    """The ``shared`` folder holding ``reference/``, or None when there is none."""
    cands: list[Path] = []
    if explicit:  # an explicit folder is the only one looked at
        cands.append(Path(explicit))
    elif os.environ.get("RFGRAPH_REFERENCE"):
        cands.append(Path(os.environ["RFGRAPH_REFERENCE"]))
    else:
        repo = Path(__file__).resolve().parents[2]
        cands += [repo.parent / "shared", Path.cwd().parent / "shared", Path.cwd() / "shared"]
    for c in cands:
        if (c / "reference" / CLAIMS_FILE).is_file():
            return c
        if (c / CLAIMS_FILE).is_file():  # the reference folder itself
            return c.parent if (c.parent / "seeds").is_dir() else c
    return cands[0] if cands and (explicit or os.environ.get("RFGRAPH_REFERENCE")) else None


def load(explicit: str | Path | None = None) -> Reference:
    """Read every table that exists under the reference root."""
    root = find_root(explicit)
    if root is None:
        return Reference.empty()
    ref_dir = root / "reference" if (root / "reference").is_dir() else root
    seeds = root / "seeds"
    return Reference(root, _claims(ref_dir / CLAIMS_FILE), _networks(ref_dir / NETWORKS_FILE),
                     _accuracy(seeds))


def _claims(path: Path) -> tuple[tuple[str, str, str], ...]:
    """Rows of the Markdown table ``| claim | value | where |`` (header and rule skipped)."""
    if not path.is_file():
        return ()
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not line.lstrip().startswith("|") or set(cells[0]) <= {"-", ":"}:
            continue
        if cells[0].lower() == "claim":
            continue
        rows.append((cells[0], cells[1], cells[2]))
    return tuple(rows)


def _networks(path: Path) -> dict[str, dict[str, int]]:
    """model -> {r, S, P, year} from the modern-networks CSV ('#' lines are comments)."""
    if not path.is_file():
        return {}
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]
    out: dict[str, dict[str, int]] = {}
    for row in csv.DictReader(lines):
        out[row["model"]] = {k: int(v) for k, v in row.items() if k != "model" and v}
    return out


def _accuracy(seeds: Path) -> dict[str, float]:
    """model -> ImageNet top-1 accuracy from the table in ``seeds/araujo2019_*.txt``."""
    out: dict[str, float] = {}
    for path in sorted(seeds.glob("araujo2019_*.txt")) if seeds.is_dir() else []:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        start = next((i for i, ln in enumerate(lines) if ACCURACY_HEADER in ln), None)
        if start is None:
            continue
        for ln in lines[start + 1:]:
            cells = ln.split("\t")
            if len(cells) < 3:
                break
            try:
                out[cells[0].strip()] = float(cells[2])
            except ValueError:
                break
    return out
