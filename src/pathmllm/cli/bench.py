"""``pathmllm bench``: PMEB, the pathology multimodal embedding benchmark (ls, run, report)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

app = typer.Typer(help="PMEB: benchmark embedders on public pathology datasets.", no_args_is_help=True)


def _fail(message: str, code: int = 2) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command("ls")
def ls(
    what: Annotated[str, typer.Argument(help="tasks, datasets or suites.")] = "tasks",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the registered tasks, datasets (with their expected layout) or suites."""
    from rich.console import Console
    from rich.table import Table

    from pathmllm.bench.datasets import DATASETS, load_builtin_datasets
    from pathmllm.bench.tasks import TASKS, suite_names, suite_tasks

    load_builtin_datasets()
    if what == "datasets":
        rows = [{"name": e.name, "kind": e.obj.kind, "folders": list(e.obj.folders), "splits": list(e.obj.splits),
                 "layout": e.obj.layout, "url": e.obj.url, "licence": e.obj.licence} for e in DATASETS]
        cols = ("name", "kind", "folders", "layout", "url")
    elif what == "tasks":
        rows = [{"name": e.name, "type": e.obj.task_type, "dataset": e.obj.dataset,
                 "suites": list(e.metadata.get("suites", ())), "description": e.obj.description} for e in TASKS]
        cols = ("name", "type", "dataset", "suites")
    elif what == "suites":
        rows = [{"name": s, "tasks": [t.name for t in suite_tasks(s)]} for s in suite_names()]
        cols = ("name", "tasks")
    else:
        _fail(f"unknown listing {what!r}; use tasks, datasets or suites")
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"pathmllm bench {what}")
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[", ".join(r[c]) if isinstance(r[c], list) else str(r[c]) for c in cols])
    Console().print(table)
    if what == "tasks":
        Console().print("Any other pairing: [bold]<type>:<dataset>[/], e.g. linear-probe:crc-100k, "
                        "knn:manifest:/data/mine.csv (types: zero-shot, retrieval, composed, multiple-choice, "
                        "linear-probe, knn).", highlight=False)


def _parse_data(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            _fail(f"--data takes NAME=PATH, got {item!r}")
        out[name] = path
    return out


@app.command("run")
def run(
    model: Annotated[str, typer.Option("--model", "-m", help="Universal embedder (tiny-qwen2-vl, checkpoint folder ...), "
                                       "CLIP pair (quiltnet-b32, open_clip:<arch>, plip ...) or patch encoder.")],
    task: Annotated[Optional[list[str]], typer.Option("--task", "-t", help="Task name or <type>:<dataset> (repeatable).")] = None,  # noqa: UP045
    suite: Annotated[Optional[str], typer.Option("--suite", "-s", help="pmeb, probe, pmeb-extra, slide-qa (a slide model: needs --qa and --stores) or grounding (a grounding model: needs --qa and --image-root).")] = None,  # noqa: UP045
    data_root: Annotated[Optional[Path], typer.Option("--data-root", "-d", help="Folder with one folder per dataset.")] = None,  # noqa: UP045
    data: Annotated[Optional[list[str]], typer.Option("--data", help="NAME=PATH for one dataset (repeatable).")] = None,  # noqa: UP045
    out: Annotated[Path, typer.Option("--out", "-o", help="Results folder (<model>.json).")] = Path("bench_results"),
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Embedding cache (default ~/.cache/pathmllm/bench).")] = None,  # noqa: UP045
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Compute every embedding afresh; write none.")] = False,
    limit: Annotated[Optional[int], typer.Option("--limit", help="At most N queries per task (stratified).")] = None,  # noqa: UP045
    weights: Annotated[Optional[str], typer.Option("--weights", help="Weights of a registry encoder.")] = None,  # noqa: UP045
    device: Annotated[str, typer.Option("--device")] = "auto",
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b")] = None,  # noqa: UP045
    seed: Annotated[int, typer.Option("--seed")] = 0,
    qa: Annotated[Optional[Path], typer.Option("--qa", help="slide-qa suite: the slide-QA file (WSI-Bench, SlideBench, ... or pathmllm JSONL).")] = None,  # noqa: UP045
    stores: Annotated[Optional[Path], typer.Option("--stores", help="slide-qa suite: the slide stores folder.")] = None,  # noqa: UP045
    slides: Annotated[Optional[Path], typer.Option("--slides", help="slide-qa suite: folder of slide files (missing stages are run).")] = None,  # noqa: UP045
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="slide-qa / grounding suites: longest answer.")] = 128,
    image_root: Annotated[Optional[Path], typer.Option("--image-root", help="grounding suite: folder the records' image and mask paths are relative to.")] = None,  # noqa: UP045
    split: Annotated[Optional[str], typer.Option("--split", help="grounding suite: only records whose split field is this (e.g. test).")] = None,  # noqa: UP045
) -> None:
    """Run tasks for one model; write OUT/<model>.json (reruns replace a task's entry).

    [bold]--suite slide-qa[/bold] evaluates a slide model (OUT/model of `pathmllm train slide`) on
    --qa with the slides in --stores: closed accuracy, BLEU-1..4, ROUGE-L, METEOR, report->slide
    Recall@K; writes OUT/<model>-slide-qa.json.

    [bold]--suite grounding[/bold] evaluates a grounding model (OUT/model of `pathmllm train ground`) on
    the MeCoVQA file --qa (images under --image-root): mDice / mIoU of the <SEG> masks (no <SEG> =
    empty prediction), closed accuracy, open BLEU / ROUGE-L / token F1, per modality; writes
    OUT/<model>-grounding.json with every prediction.

    Exit code 0: all tasks ran; 1: some failed (listed); 2: bad input or none could run.
    """
    if suite == "slide-qa":
        _run_slide_qa(model, qa, stores, slides, out, limit, device, max_new_tokens)
        return
    if suite == "grounding":
        _run_grounding(model, qa, image_root, split, out, limit, device, max_new_tokens)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from pathmllm.bench.runner import BenchConfig, run_benchmark
    from pathmllm.models.backbone import CheckpointError

    console = Console(stderr=True)
    cfg = BenchConfig(model=model, tasks=list(task or []), suite=suite, data_root=str(data_root) if data_root else None,
                      data_paths=_parse_data(list(data or [])), out_dir=str(out),
                      cache_dir="" if no_cache else (str(cache_dir) if cache_dir else None), device=device,
                      batch_size=batch_size, weights=weights, limit=limit, seed=seed)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:

        @contextmanager
        def progress(description: str, total: int) -> Iterator:
            t = bar.add_task(description, total=total)
            try:
                yield lambda n: bar.advance(t, n)
            finally:
                bar.remove_task(t)

        try:
            res = run_benchmark(cfg, progress=progress)
        except (KeyError, ValueError, FileNotFoundError, CheckpointError, ImportError) as exc:
            _fail(str(exc).strip("'\""))
    _print_summary(Console(), res.results, res.tasks_run)
    console.print(f"results -> {res.results_path}", highlight=False, soft_wrap=True)
    if res.errors:
        raise typer.Exit(1 if len(res.errors) < len(res.tasks_run) else 2)


def _run_slide_qa(model: str, qa: Path | None, stores: Path | None, slides: Path | None, out: Path,
                  limit: int | None, device: str, max_new_tokens: int) -> None:
    from rich.console import Console
    from rich.table import Table

    from pathmllm.bench.slide_qa import evaluate_slide_qa
    from pathmllm.models.backbone import CheckpointError
    from pathmllm.models.hierarchy.ask import load_slide_model
    from pathmllm.utils.atomic import write_json

    if qa is None or stores is None:
        _fail("--suite slide-qa needs --qa FILE (the questions) and --stores DIR (the slide stores)")
    try:
        slide_model, spec = load_slide_model(model, device=device)
        res = evaluate_slide_qa(slide_model, spec, qa, stores, slides=slides, max_questions=limit,
                                max_new_tokens=max_new_tokens)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    summary = {"model": model, "qa": str(qa), **res.summary()}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{Path(model).name or 'model'}-slide-qa.json"
    write_json(path, {**summary, "rows": res.rows})
    table = Table(title=f"slide-qa: {model} ({summary['n_questions']} questions)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if res.closed_accuracy is not None:
        table.add_row("closed accuracy", f"{res.closed_accuracy:.3f} (n={summary['n_closed']})")
    for k, v in (res.open_scores or {}).items():
        table.add_row(k, f"{v:.3f}")
    for k, v in (res.retrieval or {}).items():
        table.add_row(f"report->slide {k}", f"{v:.3f}" if isinstance(v, float) else str(v))
    Console().print(table)
    for s in res.skipped:
        Console(stderr=True).print(f"[yellow]skipped:[/] {s}", highlight=False, soft_wrap=True)
    Console(stderr=True).print(f"results -> {path}", highlight=False, soft_wrap=True)
    if res.skipped:
        raise typer.Exit(1)


def _run_grounding(model: str, qa: Path | None, image_root: Path | None, split: str | None, out: Path,
                   limit: int | None, device: str, max_new_tokens: int) -> None:
    from rich.console import Console
    from rich.table import Table

    from pathmllm.bench.grounding import evaluate_grounding
    from pathmllm.data.mecovqa import read_mecovqa
    from pathmllm.models.grounding.model import GroundingLM
    from pathmllm.utils.atomic import write_json

    if qa is None or image_root is None:
        _fail("--suite grounding needs --qa FILE (MeCoVQA JSON) and --image-root DIR (its images and masks)")
    try:
        records, problems = read_mecovqa(qa, image_root)
        if split is not None:
            records = [r for r in records if r.meta.get("split") == split]
        if not records:
            _fail(f"{qa}: no records{f' with split {split!r}' if split else ''} to evaluate")
        ground_model = GroundingLM.from_pretrained(model, device=device)
        res = evaluate_grounding(ground_model, records, max_items=limit, max_new_tokens=max_new_tokens)
    except (FileNotFoundError, ValueError) as exc:  # CheckpointError is a FileNotFoundError
        _fail(str(exc))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{Path(model).name or 'model'}-grounding.json"
    write_json(path, {"model": model, "qa": str(qa), "split": split, **res,
                      "skipped": [p.reason for p in problems if p.skipped]})
    table = Table(title=f"grounding: {model} ({res['n']} records)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    seg = res["segmentation"]
    if seg.get("n"):
        table.add_row("mDice", f"{seg['mDice']:.3f} (n={seg['n']})")
        table.add_row("mIoU", f"{seg['mIoU']:.3f}")
        table.add_row("<SEG> emitted", f"{res['seg_emitted']:.3f}")
    if res["closed"]["n"]:
        table.add_row("closed accuracy", f"{res['closed']['accuracy']:.3f} (n={res['closed']['n']})")
    for k, v in res["open"].items():
        if k != "n":
            table.add_row(k, f"{v:.3f}")
    Console().print(table)
    Console(stderr=True).print(f"results -> {path}", highlight=False, soft_wrap=True)


def _print_summary(console: object, results: dict, names: list[str]) -> None:
    from rich.table import Table

    table = Table(title=f"{results['model']} ({results.get('dim', '?')}-d)")
    for c in ("task", "n", "metrics"):
        table.add_column(c, overflow="fold")
    for name in names:
        e = results["tasks"][name]
        if "error" in e:
            table.add_row(name, "", f"[red]{e['error']}[/]")
        else:
            table.add_row(name, str(e.get("n", "")), "  ".join(f"{k} {v:.3f}" for k, v in e["metrics"].items()))
    console.print(table)  # type: ignore[attr-defined]
    for name in names:
        for w in results["tasks"][name].get("warnings", []):
            console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)  # type: ignore[attr-defined]


@app.command("report")
def report(
    results: Annotated[list[Path], typer.Argument(help="Results files or folders (from `pathmllm bench run`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Writes OUT.json and OUT.md.")] = Path("bench_results/report"),
) -> None:
    """Compare models side by side: a JSON and a markdown table (best value in bold)."""
    from pathmllm.bench.report import markdown_table, read_results, write_report

    try:
        data = read_results(results)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    json_path, md_path = write_report(data, out)
    typer.echo(markdown_table(data))
    typer.echo(f"-> {json_path}, {md_path}", err=True)
