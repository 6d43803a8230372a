"""``rfgraph experiments``: run the reproduction experiments, write figures, CSVs and report.md."""

from __future__ import annotations

import argparse
import sys

from ..outputs import check_folder
from ..report import json_text

EXAMPLES = """examples:
  rfgraph experiments --out out/exp --quick          every experiment, CI smoke size (< 5 min)
  rfgraph experiments growth nonlinearities --out out/exp --runs 50
  rfgraph experiments --list

exit codes: 0 every experiment ran (verdicts may still be 'differ'); 1 an experiment failed
(its error is in the report); 2 bad arguments."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``experiments`` parser."""
    p = sub.add_parser("experiments", help="reproduce Luo et al. 2016 (ERF) and beyond: figures + "
                                           "report.md",
                       description="Run the ERF/TRF experiments: per experiment PNG figures and a "
                                   "CSV under OUT/NAME/, and OUT/report.md setting each figure "
                                   "next to the paper's claim (match / differ) with the measured "
                                   "value.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help="experiments to run (default: all)")
    p.add_argument("--out", default="out/experiments", metavar="DIR",
                   help="output folder (default: out/experiments)")
    p.add_argument("--runs", type=int, metavar="N",
                   help="runs per ERF average (default: the paper's, 20 or 100)")
    p.add_argument("--quick", action="store_true",
                   help="small nets and few runs: the whole set in minutes (CI smoke)")
    p.add_argument("--seed", type=int, default=0, help="base random seed (default 0)")
    p.add_argument("--reference", metavar="DIR",
                   help="folder with reference/luo2016_claims.md and seeds/ (default: ../shared)")
    p.add_argument("--threads", type=int, default=1,
                   help="onnxruntime threads per session (default 1; 0 = all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="json: print a summary of every claim (the report.md is written either way)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the chosen experiments; exit 1 when one of them failed."""
    from ..experiments import EXPERIMENTS, run_experiments

    if args.list:
        for e in EXPERIMENTS.values():
            print(f"{e.name:22s} {e.title} ({e.source})")
        return 0
    if args.runs is not None and args.runs < 1:
        from ..errors import RFGraphError

        raise RFGraphError("--runs must be at least 1")
    check_folder(args.out, what="--out")
    results = run_experiments(args.names, args.out, runs=args.runs, quick=args.quick,
                              seed=args.seed, reference=args.reference,
                              progress=not (args.no_progress or getattr(args, "quiet", False))
                              and sys.stderr.isatty(), threads=args.threads)
    failed = [r for r in results if r.error]
    for r in failed:
        print(f"rfgraph: experiment {r.name} failed: {r.error}", file=sys.stderr)
    if args.format == "json":
        print(json_text(summary(results, args.out)))
    else:
        print(f"report: {args.out}/report.md ({len(results)} experiments, {len(failed)} failed)")
    return 1 if failed else 0


def summary(results: list, out: str) -> dict:
    """Every experiment's files and claims (claim, paper, measured, verdict) as plain data."""
    return {"report": f"{out}/report.md", "experiments": [
        {"name": r.name, "title": r.title, "seconds": round(r.seconds, 2), "error": r.error,
         "figures": list(r.figures), "csv": r.csv,
         "claims": [{"claim": c.claim, "paper": c.paper, "measured": c.measured,
                     "verdict": c.verdict.value, "note": c.note} for c in r.claims]}
        for r in results]}
