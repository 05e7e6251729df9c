"""``pathmllm slide ask`` / ``pathmllm slide report``: question answering on a slide, with evidence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

ModelOpt = Annotated[Path, typer.Option("--model", "-m", help="Slide model folder (OUT/model of `pathmllm train slide`).")]
StoresOpt = Annotated[Path, typer.Option("--out", "-o", help="Slide stores folder: missing stages are run and kept here.")]
HeatmapOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--heatmap", help="Evidence heatmap PNG (default: <store>/evidence_heatmap.png)."),
]
MppOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option("--mpp", help="µm per level-0 pixel, overriding the slide's metadata (needed when it has none)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the answer and evidence as JSON.")]
TopOpt = Annotated[int, typer.Option("--top", help="Evidence regions shown (patches: twice as many).")]


def _fail(message: str, code: int = 2) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _answer(slide: Path, question: str, model_dir: Path, out: Path, options: list[str] | None, heatmap: Path | None,
            mpp: float | None, device: str, max_new_tokens: int, top: int, as_json: bool) -> None:
    from pathmllm.models.backbone import CheckpointError
    from pathmllm.models.hierarchy.ask import ask_slide, load_slide_model
    from pathmllm.wsi.errors import SlideError

    if not slide.exists():
        _fail(f"{slide}: no such slide file")
    try:
        model, spec = load_slide_model(model_dir, device=device)
    except (CheckpointError, FileNotFoundError) as exc:
        _fail(str(exc))
    from pathmllm.models.hierarchy.pipeline import store_dir
    from pathmllm.wsi.reader import slide_name

    heat = heatmap or store_dir(out, slide_name(slide), spec) / "evidence_heatmap.png"
    try:
        res = ask_slide(model, spec, slide, question, out, options=options, mpp=mpp, heatmap=heat,
                        max_new_tokens=max_new_tokens, top_regions=top, top_patches=2 * top, device=device)
    except (ValueError, FileNotFoundError, SlideError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(res.to_dict(), indent=2))
        return
    _print(res)


def _print(res: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]Q:[/] {res.question}", highlight=False)
    if res.options:
        for i, o in enumerate(res.options):
            console.print(f"   {'ABCD'[i]}) {o}", highlight=False)
    console.print(f"[bold]A:[/] {res.answer}", highlight=False)
    t = Table(title=f"evidence regions ({res.n_regions} regions, {res.n_patches} patches read)")
    for c in ("region", "x", "y", "width", "height", "score", "attention"):
        t.add_column(c, justify="right")
    for r in res.evidence.regions:
        t.add_row(str(r["region_index"]), str(r["x"]), str(r["y"]), str(r["width"]), str(r["height"]),
                  f"{r['score']:.3f}", f"{r['attention']:.3f}")
    console.print(t)
    t = Table(title="evidence patches (level-0 px)")
    for c in ("patch", "region", "x", "y", "score"):
        t.add_column(c, justify="right")
    for p in res.evidence.patches:
        t.add_row(str(p["patch_index"]), str(p["region_index"]), str(p["x"]), str(p["y"]), f"{p['score']:.3f}")
    console.print(t)
    console.print(f"heatmap: {res.heatmap}", highlight=False, soft_wrap=True)


def ask(
    slide: Annotated[Path, typer.Argument(help="A slide file.")],
    question: Annotated[str, typer.Argument(help="The question, e.g. \"What is the diagnosis?\".")],
    model: ModelOpt,
    out: StoresOpt,
    option: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--option", help="A multiple-choice option (repeat, in order A, B, ...)."),
    ] = None,
    heatmap: HeatmapOpt = None,
    mpp: MppOpt = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda ...")] = "auto",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest answer in tokens.")] = 64,
    top: TopOpt = 5,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question about a slide, with the regions and patches that support the answer.

    Runs the tiling, cells and patch-feature stages the slide lacks (as the model was trained),
    then answers. Exit code 2 for bad input (no tissue, question too long, not a slide model).
    """
    _answer(slide, question, model, out, list(option) if option else None, heatmap, mpp, device, max_new_tokens,
            top, as_json)


def report(
    slide: Annotated[Path, typer.Argument(help="A slide file.")],
    model: ModelOpt,
    out: StoresOpt,
    heatmap: HeatmapOpt = None,
    mpp: MppOpt = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda ...")] = "auto",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest report in tokens.")] = 256,
    top: TopOpt = 5,
    as_json: JsonOpt = False,
) -> None:
    """Write a pathology report for a slide, with its evidence regions, patches and heatmap."""
    from pathmllm.models.backbone import CheckpointError
    from pathmllm.models.hierarchy.pipeline import load_spec

    try:
        question = load_spec(model).report_question
    except CheckpointError as exc:
        _fail(str(exc))
    _answer(slide, question, model, out, None, heatmap, mpp, device, max_new_tokens, top, as_json)
