"""The whole conformance suite on demand: every node-suite case and sweep, TRF vs onnxruntime's
measured dependencies and VJP vs central differences; prints counts per op and in total and
writes a JSON.  Usage: PYTHONPATH=. python benchmarks/conformance.py [--json out.json] [--op Resize]"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))  # PYTHONPATH first: a baseline tree can be measured

from tests.conformance.cases import all_cases
from tests.conformance.oracle import TRF_CLASSES, VJP_CLASSES, Verdict, check_trf, check_vjp


def _limited(check, case, seconds: int = 30):
    """One check under a time limit (a case past it is recorded as refused: no verdict)."""
    def stop(*_):
        raise TimeoutError

    signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        return check(case)
    except TimeoutError:
        return Verdict("refused", f"no verdict within {seconds} s")
    except Exception as exc:  # noqa: BLE001 - the oracle itself failed: visible, counted as a crash
        return Verdict("CRASH", f"harness: {type(exc).__name__}: {exc}".splitlines()[0])
    finally:
        signal.alarm(0)


def run(ops: set[str] | None) -> list[dict]:
    """One row per case: name, op, TRF verdict and VJP verdict with their details."""
    rows = []
    for case in all_cases():
        if ops and case.op not in ops:
            continue
        print(case.name, file=sys.stderr, flush=True)
        trf, grad = _limited(check_trf, case), _limited(check_vjp, case)
        rows.append({"case": case.name, "op": case.op, "trf": trf.verdict, "trf_detail": trf.detail,
                     "vjp": grad.verdict, "vjp_detail": grad.detail})
    return rows


def summary(rows: list[dict]) -> dict:
    """Counts per class in total and per op."""
    per_op: dict[str, dict[str, collections.Counter]] = collections.defaultdict(
        lambda: {"trf": collections.Counter(), "vjp": collections.Counter()})
    for r in rows:
        per_op[r["op"]]["trf"][r["trf"]] += 1
        per_op[r["op"]]["vjp"][r["vjp"]] += 1
    return {"trf": {k: sum(r["trf"] == k for r in rows) for k in TRF_CLASSES},
            "vjp": {k: sum(r["vjp"] == k for r in rows) for k in VJP_CLASSES},
            "per_op": {op: {"trf": dict(c["trf"]), "vjp": dict(c["vjp"])} for op, c in sorted(per_op.items())}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", default="conformance.json")
    p.add_argument("--op", action="append")
    p.add_argument("--docs", action="store_true", help="also write docs/conformance.json (the summary) "
                   "and regenerate docs/ops.md from it")
    args = p.parse_args()
    rows = run(set(args.op) if args.op else None)
    s = summary(rows)
    for op, c in s["per_op"].items():
        print(f"{op:28s} TRF {c['trf']}  VJP {c['vjp']}")
    for r in rows:
        if r["trf"] in ("UNSOUND", "CRASH") or r["vjp"] in ("MISMATCH", "CRASH"):
            print(f"  {r['case']} [{r['op']}]: TRF {r['trf']} {r['trf_detail']} | VJP {r['vjp']} {r['vjp_detail']}")
    print(f"cases {len(rows)}  TRF {s['trf']}  VJP {s['vjp']}")
    Path(args.json).write_text(json.dumps({"summary": s, "cases": rows}, indent=1))
    if args.docs:
        from tests.conformance import docs

        docs.RESULTS.write_text(json.dumps(s, indent=1, sort_keys=True) + "\n")
        docs.DOC.write_text(docs.generated())


if __name__ == "__main__":
    main()
