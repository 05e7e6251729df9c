"""Compare models side by side: one JSON and one markdown table from several results files.

    pathmllm bench report bench_results/ --out bench_results/report
    # -> report.json and report.md: a row per task and metric, a column per model, best in bold
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from pathmllm.bench.tasks import TASK_TYPES
from pathmllm.utils.atomic import write_text

#: the metrics a report shows per task type (all are in the JSON)
REPORT_METRICS = {t: cls.main_metrics for t, cls in TASK_TYPES.items()}
#: the metric averaged into each meta-task's mean row
SUMMARY_METRIC = {"zero-shot": "balanced_accuracy", "linear-probe": "balanced_accuracy", "knn": "balanced_accuracy",
                  "retrieval": "mean_R", "composed": "R@1", "multiple-choice": "accuracy"}


def read_results(paths: list[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Results files (``<model>.json`` from ``pathmllm bench run``), folders searched for them."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.glob("*.json") if not f.name.startswith("report"))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such results file or folder")
    out = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{f}: not a results file ({exc})") from None
        if isinstance(data, dict) and "model" in data and isinstance(data.get("tasks"), dict):
            out.append(data)
    if not out:
        raise ValueError(f"no results files (JSON with 'model' and 'tasks') in {', '.join(map(str, paths))}")
    return out


def comparison_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, metric): ``{"task", "type", "metric", "values": {model: value | None}}``,
    then one mean row per meta-task over the tasks every model finished."""
    models = [r["model"] for r in results]
    tasks: dict[str, str] = {}
    for r in results:
        for name, entry in r["tasks"].items():
            tasks.setdefault(name, entry.get("task_type", ""))
    order = list(TASK_TYPES)
    rows = []
    for name, ttype in sorted(tasks.items(), key=lambda kv: (order.index(kv[1]) if kv[1] in order else 99, kv[0])):
        for metric in REPORT_METRICS.get(ttype, ()):
            values = {r["model"]: r["tasks"].get(name, {}).get("metrics", {}).get(metric) for r in results}
            errors = {r["model"]: r["tasks"][name]["error"] for r in results if "error" in r["tasks"].get(name, {})}
            rows.append({"task": name, "type": ttype, "metric": metric, "values": values, "errors": errors})
    for ttype, metric in SUMMARY_METRIC.items():
        names = [n for n, t in tasks.items() if t == ttype]
        complete = [n for n in names if all(
            r["tasks"].get(n, {}).get("metrics", {}).get(metric) is not None for r in results)]
        if len(complete) > 1:
            values = {m: sum(r["tasks"][n]["metrics"][metric] for n in complete) / len(complete)
                      for m, r in zip(models, results)}
            rows.append({"task": f"mean {ttype} ({len(complete)} tasks)", "type": ttype, "metric": metric,
                         "values": values, "errors": {}})
    return rows


def markdown_table(results: list[dict[str, Any]], digits: int = 3) -> str:
    models = [r["model"] for r in results]
    lines = ["| task | type | metric | " + " | ".join(models) + " |",
             "|---|---|---|" + "---:|" * len(models)]
    for row in comparison_rows(results):
        vals = row["values"]
        finite = [v for v in vals.values() if isinstance(v, (int, float)) and not math.isnan(v)]
        best = max(finite) if len(finite) > 1 else None
        cells = []
        for m in models:
            v = vals.get(m)
            if m in row["errors"]:
                cells.append("error")
            elif v is None:
                cells.append("—")
            else:
                text = f"{v:.{digits}f}"
                cells.append(f"**{text}**" if best is not None and v == best else text)
        lines.append(f"| {row['task']} | {row['type']} | {row['metric']} | "
                     + " | ".join(cells) + " |")
    warnings = [f"- {r['model']} / {name}: {w}" for r in results for name, e in r["tasks"].items()
                for w in e.get("warnings", [])]
    errors = [f"- {r['model']} / {name}: {e['error']}" for r in results for name, e in r["tasks"].items() if "error" in e]
    if warnings:
        lines += ["", "Warnings:", *warnings]
    if errors:
        lines += ["", "Errors:", *errors]
    return "\n".join(lines) + "\n"


def write_report(results: list[dict[str, Any]], out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``<out>.json`` (every model's results and the comparison rows) and ``<out>.md``."""
    out = Path(out)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    write_text(json_path, json.dumps({"models": [r["model"] for r in results], "rows": comparison_rows(results),
                                      "results": results}, indent=2, default=float))
    write_text(md_path, markdown_table(results))
    return json_path, md_path
