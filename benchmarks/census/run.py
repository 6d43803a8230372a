"""Run every rfgraph command on every collected model, as a user would, and write docs/census.md.

``python benchmarks/census/run.py --all``: run what is not cached yet, then regenerate the table.
Each command runs in a subprocess (``python -m rfgraph``, PYTHONPATH = this tree) under a time
limit and is classified ok (exit 0) / partial (exit 1: stop node and reason) / refused (exit 2:
the error line) / INTERNAL (exit 3, a traceback, or a timeout).  Results are cached per model in
``CACHE/results/<source>/<name>.json``; ``--rerun`` redoes the cached ones (all, or those matching
``--only`` / ``--failing``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import DEFAULT_CACHE, Entry, read_manifests

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ["analyze", "analyze-all-json", "boxes", "erf", "diagnose", "report", "show"]
SOURCE_ORDER = ["pypi", "torchvision-ts", "timm-ts", "transformers-ts", "keras", "keras-dynamic", "tflite",
                "torchvision-dynamo", "timm-dynamo"]
MAX_BOXES = 3  # output heads mapped with `boxes`, per model


# ---------------------------------------------------------------- running one command


def run_cli(args: list[str], limit: float) -> dict[str, Any]:
    """Run ``python -m rfgraph ARGS`` and classify the outcome."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RFGRAPH_DEBUG": "1", "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}
    start = time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", "rfgraph", *args], capture_output=True, text=True,
                              timeout=limit, env=env, cwd=str(ROOT), check=False)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired:
        rc, out, err = -9, "", f"timeout after {limit:.0f} s"
    result: dict[str, Any] = {"args": args, "rc": rc, "time": round(time.time() - start, 1)}
    result.update(classify(rc, err))
    if result["outcome"] == "INTERNAL":
        result["trace"] = "\n".join(err.strip().splitlines()[-8:])
    result["stdout"] = out if len(out) < 200_000 else ""
    return result


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else ""


def classify(rc: int, err: str) -> dict[str, str]:
    """Outcome and reason from the exit status and stderr."""
    if rc == -9:
        return {"outcome": "INTERNAL", "reason": err}
    if rc == 3 or "Traceback (most recent call last)" in err:
        return {"outcome": "INTERNAL", "reason": last_line(err)}
    if rc == 0:
        return {"outcome": "ok", "reason": ""}
    if rc == 1:
        return {"outcome": "partial", "reason": last_line(err)}
    if rc == 2:
        errors = [ln for ln in err.splitlines() if ln.startswith("rfgraph: error:")]
        return {"outcome": "refused", "reason": (errors[-1] if errors else last_line(err))[:300]}
    return {"outcome": "INTERNAL", "reason": f"exit {rc}: {last_line(err)}"}


# ---------------------------------------------------------------- one model


def model_args(entry: Entry) -> list[str]:
    """The model file and the options that say how to read it."""
    args = [entry.path]
    for flag, value in (("--input-shape", entry.input_shape), ("--input", entry.input), ("--layout", entry.layout)):
        if value:
            args += [flag, value]
    for fill in entry.fill:
        args += ["--fill", fill]
    return args


def parse_json(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (ValueError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def middle_index(endpoint: dict[str, Any], doc: dict[str, Any]) -> str | None:
    """The middle unit of an end point, along the input's spatial axes (same rank), else None."""
    shape, axes = endpoint.get("shape") or [], doc["input"].get("spatial_axes") or []
    if len(shape) != len(doc["input"].get("shape") or []) or not axes:
        return None
    dims = [shape[a] for a in axes]
    if any(d is None or d < 1 for d in dims):
        return None
    return ",".join(str((d - 1) // 2) for d in dims)


def local(endpoint: dict[str, Any]) -> bool:
    """Local along every axis (boxes and show refuse a field that is global along any axis)."""
    rs = endpoint.get("r") or []
    return bool(rs) and all(r is not None for r in rs)


def op_count(path: str) -> int:
    import onnx
    return len(onnx.load(path, load_external_data=False).graph.node)


def test_image(entry: Entry, doc: dict[str, Any] | None, work: Path) -> Path:
    """A generated picture (gradient and a disc) of the input's spatial size."""
    import numpy as np
    from PIL import Image
    h, w = 128, 128
    if doc:
        shape, axes = doc["input"].get("shape") or [], doc["input"].get("spatial_axes") or []
        dims = [shape[a] for a in axes if shape[a]]
        if len(dims) >= 2:
            h, w = dims[-2], dims[-1]
    yy, xx = np.mgrid[0:h, 0:w]
    disc = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 4) ** 2) * 255
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), disc], axis=-1).astype(np.uint8)
    path = work / "image.png"
    Image.fromarray(img).save(path)
    return path


def run_model(entry: Entry, work: Path, limit: float) -> dict[str, Any]:
    """Every command on one model; returns the per-command outcomes and the main r/S/P."""
    work.mkdir(parents=True, exist_ok=True)
    base = model_args(entry)
    res: dict[str, Any] = {"entry": asdict(entry), "ops": op_count(entry.path), "commands": {}}
    start = time.time()
    cmds = res["commands"]
    cmds["analyze"] = run_cli(["analyze", *base], limit)
    cmds["analyze-all-json"] = run_cli(["analyze", *base, "--all", "--format", "json"], limit)
    default = run_cli(["analyze", *base, "--format", "json", "-q"], limit)
    doc = parse_json(default["stdout"])
    res["endpoints"] = doc["endpoints"] if doc else []
    res["stops"] = (doc or {}).get("stops", [])
    res["input"] = (doc or {}).get("input")
    all_doc = parse_json(cmds["analyze-all-json"]["stdout"])
    if all_doc and all_doc.get("stops"):
        res["stops"] = all_doc["stops"]
    cmds["boxes"] = run_boxes(base, doc, limit)
    erf = run_cli(["erf", *base, "--method", "grad", "--runs", "1", "--format", "json", "-q"], limit)
    if erf["outcome"] == "refused":
        fd = run_cli(["erf", *base, "--method", "fd", "--runs", "1", "--format", "json", "-q"], limit)
        fd["grad_refused"] = erf["reason"]
        erf = fd
    cmds["erf"] = erf
    cmds["diagnose"] = run_cli(["diagnose", *base, "--format", "json", "-q"], limit)
    cmds["report"] = run_cli(["report", *base, "-o", str(work / "report.html"), "--erf-runs", "1",
                              "--erf-limit", "2", "-q"], limit)
    heads = [e for e in res["endpoints"] if local(e)] or res["endpoints"]
    show = ["show", *base, "--image", str(test_image(entry, doc, work)), "-o", str(work / "show.png"),
            "--runs", "1", "-q"]
    if heads:
        show += ["--output", heads[-1]["tensor"]]
    cmds["show"] = run_cli(show, limit) if heads else {"outcome": "n/a", "reason": "no end point", "time": 0}
    for c in cmds.values():
        if c.get("args", [None])[0] != "analyze" or "--all" in c.get("args", []):
            c["stdout"] = ""  # keep the cache small: only the analyze outputs are re-read
    res["time"] = round(time.time() - start, 1)
    return res


def run_boxes(base: list[str], doc: dict[str, Any] | None, limit: float) -> dict[str, Any]:
    """`boxes` on the middle unit of each head (at most MAX_BOXES); the worst outcome wins."""
    if not doc:
        return {"outcome": "n/a", "reason": "analyze printed no JSON", "time": 0}
    runs = []
    for ep in [e for e in doc["endpoints"] if local(e)][-MAX_BOXES:]:
        index = middle_index(ep, doc)
        args = ["boxes", *base, "--output", ep["tensor"], "--format", "json", "-q"]
        run = run_cli(args + (["--index", index] if index else ["--all"]), limit)
        units = re.search(r"units per axis: \(([\d, ]+)\)", run["reason"]) if run["outcome"] == "refused" else None
        if units:  # the unit axes are not the input's: take the middle of the ones the tool names
            middle = ",".join(str((int(d) - 1) // 2) for d in units.group(1).split(",") if d.strip())
            run = run_cli(args + ["--index", middle], limit)
        runs.append(run)
    if not runs:
        return {"outcome": "n/a", "reason": "no end point with a local field", "time": 0}
    order = ["INTERNAL", "refused", "partial", "ok"]
    worst = min(runs, key=lambda r: order.index(r["outcome"]))
    return {**worst, "time": round(sum(r["time"] for r in runs), 1), "heads": len(runs)}


# ---------------------------------------------------------------- the table


def fmt_axes(values: list[Any]) -> str:
    vals = ["g" if v is None else str(v) for v in values]
    return vals[0] if len(set(vals)) == 1 else "x".join(vals)


def rsp(res: dict[str, Any], limit: int = 2) -> str:
    """r/S/P of the main end points (the last ones: the outputs or the heads before a global op)."""
    eps = res.get("endpoints") or []
    parts = [f"{fmt_axes(e['r'])}/{fmt_axes(e['S'])}/{fmt_axes(e['P'])}" for e in eps[-limit:]]
    more = f" (+{len(eps) - limit})" if len(eps) > limit else ""
    return "; ".join(parts) + more


def cell(cmd: dict[str, Any] | None, res: dict[str, Any], name: str) -> str:
    if not cmd:
        return ""
    out = cmd["outcome"]
    if out == "partial" and (name.startswith("analyze") or not cmd["reason"]) and res.get("stops"):
        s = res["stops"][0]
        reason = s["reason"].removeprefix(f"node '{s['node']}' ({s['op']}): ")
        return f"partial: {s['node']} ({s['op']}): {short(reason, 80)}"
    if out in ("ok", "n/a"):
        return out if out == "ok" else f"n/a ({cmd['reason']})"
    return f"{out}: {short(cmd['reason'])}"


def short(text: str, n: int = 90) -> str:
    text = text.replace("|", "/").replace("\n", " ").removeprefix("rfgraph: error: ")
    return text if len(text) <= n else text[: n - 3] + "..."


def markdown(results: list[dict[str, Any]], skipped: list[Entry], pending: list[Entry] | None = None) -> str:
    """docs/census.md: summary, failure classes, one row per model (with the rfgraph commit it ran
    on), skips, and the models collected but not run yet."""
    lines = ["# Census: every rfgraph command on real exported models", "",
             "Generated by `python benchmarks/census/run.py --all` (see benchmarks/README.md); do not edit.",
             "Outcomes: ok (exit 0), partial (exit 1: stop node and reason), refused (exit 2: the error line),",
             "INTERNAL (exit 3, a traceback, or a timeout). r/S/P: the last two default end points",
             "(`g` = global on that axis; one value when all axes agree).", ""]
    lines += summary(results) + [""] + failure_classes(results) + [""]
    lines += ["## Models", "", "| model | source | ops | " + " | ".join(COMMANDS) + " | r/S/P | time s | commit |",
              "|---|---|---:|" + "---|" * len(COMMANDS) + "---|---:|---|"]
    for res in results:
        e = res["entry"]
        cells = [cell(res["commands"].get(c), res, c) for c in COMMANDS]
        lines.append(f"| {e['name']} | {e['source']} | {res['ops']} | " + " | ".join(cells)
                     + f" | {rsp(res)} | {res['time']} | {res.get('commit', '-')} |")
    lines += ["", "## Models not collected (with the reason)", ""]
    lines += [f"- {e.source} {e.name}: {short(e.skip, 200)}" for e in skipped] or ["none"]
    lines += ["", "## Models collected, not run yet", ""]
    lines += [f"- {e.source} {e.name}" for e in pending or []] or ["none"]
    lines += ["", "## How each model was read", ""]
    lines += [how_read(Entry(**r["entry"])) for r in results]
    return "\n".join(lines) + "\n"


def how_read(e: Entry) -> str:
    """One line: where the model comes from, the options it was read with, and why."""
    options = " ".join(model_args(e)[1:])
    return (f"- {e.source} {e.name}: {e.origin}" + (f"; options `{options}`" if options else "")
            + (f"; {e.note}" if e.note else ""))


def summary(results: list[dict[str, Any]]) -> list[str]:
    kinds = ["ok", "partial", "refused", "INTERNAL", "n/a"]
    out = [f"## Summary ({len(results)} models)", "", "| command | " + " | ".join(kinds) + " |",
           "|---|" + "---:|" * len(kinds)]
    for c in COMMANDS:
        n = Counter(r["commands"].get(c, {}).get("outcome", "n/a") for r in results)
        out.append(f"| {c} | " + " | ".join(str(n.get(k, 0)) for k in kinds) + " |")
    by_source = Counter(r["entry"]["source"] for r in results)
    out += ["", "Models per source: " + ", ".join(f"{k} {v}" for k, v in sorted(by_source.items()))]
    return out


def failure_classes(results: list[dict[str, Any]]) -> list[str]:
    """INTERNAL errors grouped by their final line; partial stops grouped by op; refusals by reason."""
    internal: dict[str, list[str]] = defaultdict(list)
    stops: dict[str, list[str]] = defaultdict(list)
    refused: dict[str, list[str]] = defaultdict(list)
    for r in results:
        name = r["entry"]["name"] + f" [{r['entry']['source']}]"
        for c, cmd in r["commands"].items():
            if cmd["outcome"] == "INTERNAL":
                internal[normalise(cmd["reason"])].append(f"{name} `{c}`")
            elif cmd["outcome"] == "refused":
                refused[f"{c}: {normalise(cmd['reason'])}"].append(name)
        for s in r.get("stops") or []:
            stops[f"{s['op']}: {normalise(s['reason'])}"].append(f"{name} at {s['node']}")
    out = ["## Failure classes", "", f"### INTERNAL ({sum(map(len, internal.values()))}), by final line", ""]
    out += group_lines(internal)
    out += ["", f"### Partial analyses (stops), by op and reason ({len(stops)} classes)", ""] + group_lines(stops)
    out += ["", f"### Refusals, by command and reason ({len(refused)} classes)", ""] + group_lines(refused)
    return out


def normalise(reason: str) -> str:
    """A reason without the model-specific names, so that equal defects group together."""
    text = re.sub(r"'[^']*'", "'…'", reason)
    text = re.sub(r"\d+", "N", text)
    return short(text, 160)


def group_lines(groups: dict[str, list[str]]) -> list[str]:
    if not groups:
        return ["none"]
    rows = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    return [f"- **{k}** ({len(v)}): " + ", ".join(v[:12]) + (" ..." if len(v) > 12 else "") for k, v in rows]


# ---------------------------------------------------------------- driver


def result_path(cache: Path, entry: Entry) -> Path:
    return cache / "results" / entry.source / f"{entry.name}.json"


def is_failing(path: Path) -> bool:
    res = json.loads(path.read_text())
    return any(c["outcome"] in ("INTERNAL", "partial", "refused") for c in res["commands"].values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--all", action="store_true", help="every collected model (else only --only)")
    parser.add_argument("--only", nargs="*", default=[], help="model names (or source/name)")
    parser.add_argument("--rerun", action="store_true", help="redo cached results of the selected models")
    parser.add_argument("--failing", action="store_true", help="with --rerun: only models with a non-ok outcome")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--limit", type=float, default=300.0, help="seconds per command")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "census.md")
    args = parser.parse_args(argv)
    entries = read_manifests(args.cache)
    ready = sorted((e for e in entries if not e.skip and Path(e.path).exists()),
                   key=lambda e: (SOURCE_ORDER.index(e.source) if e.source in SOURCE_ORDER else 99, e.name))
    chosen = [e for e in ready if args.all or e.name in args.only or f"{e.source}/{e.name}" in args.only]

    def wanted(e: Entry) -> bool:
        path = result_path(args.cache, e)
        if not path.exists():
            return True
        return args.rerun and (not args.failing or is_failing(path))

    todo = [e for e in chosen if wanted(e)]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                            check=False).stdout.strip() or "-"
    print(f"{len(ready)} models collected, {len(todo)} to run", flush=True)

    def one(e: Entry) -> None:
        res = run_model(e, args.cache / "work" / e.source / e.name, args.limit)
        res["commit"] = commit  # the rfgraph the row ran on (the table is built over several runs)
        path = result_path(args.cache, e)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res))
        outs = " ".join(f"{c}={v['outcome']}" for c, v in res["commands"].items())
        print(f"{e.source}/{e.name} {res['time']}s {outs}", flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, todo))
    results = [json.loads(result_path(args.cache, e).read_text()) for e in ready
               if result_path(args.cache, e).exists()]
    skipped = [e for e in entries if e.skip]
    pending = [e for e in ready if not result_path(args.cache, e).exists()]
    args.docs.write_text(markdown(results, skipped, pending))
    print(f"wrote {args.docs} ({len(results)} models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
