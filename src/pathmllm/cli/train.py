"""``pathmllm train``: training recipes (``cells``: the hovernet-lite nucleus segmenter; ``embed``:
the universal embedder; ``slide``: the hierarchical slide LLM, three stages)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

app = typer.Typer(help="Train models from a YAML recipe.", no_args_is_help=True)


@app.callback()
def train_group() -> None:
    """Train models from a YAML recipe (config fields can be overridden as key.path=value)."""


# options every recipe takes
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Start again in an OUT that holds a run.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and exit.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoints/last.")]


def _fail(message: str, code: int = 1) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _run_recipe(load_config: Any, train: Any, config: Path | None, overrides: list[str] | None,
                resume: bool, overwrite: bool, dry_run: bool, as_json: bool) -> Any:
    """Load a recipe's config (exit 2 when bad), print it for --dry-run, else train with progress
    lines shown (exit 2 for an existing run or missing data) and print the metrics for --json.
    Returns the training result when the caller has a summary to print, else None (--dry-run,
    --json, or a process other than the main one, whose metrics are empty)."""
    import logging
    from dataclasses import asdict

    from pathmllm.train.common import RunExistsError

    try:
        cfg = load_config(config, overrides or [])
    except (ValueError, TypeError, FileNotFoundError) as exc:
        _fail(str(exc), code=2)
    if dry_run:
        import yaml

        typer.echo(yaml.safe_dump(asdict(cfg), sort_keys=False))
        return None
    # training takes minutes: show its progress lines even without -v
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    train_log = logging.getLogger("pathmllm.train")
    if train_log.getEffectiveLevel() > logging.INFO:
        train_log.setLevel(logging.INFO)
    try:
        result = train(cfg, resume=resume, overwrite=overwrite)
    except (RunExistsError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc), code=2)
    if not result.metrics:
        return None
    if as_json:
        typer.echo(json.dumps(result.metrics, indent=2))
        return None
    return result


def _echo_summary(line: str, result: Any) -> None:
    """A recipe's summary line, then where its model and metrics are."""
    typer.echo(f"{line}\nmodel: {result.model_dir}\nmetrics: {Path(result.out) / 'metrics.json'}")


@app.command("cells")
def cells(
    overrides: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Argument(help="Config overrides as key.path=value, e.g. optim.steps=500 out=out/try2."),
    ] = None,
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--config", "-c", help="YAML recipe (e.g. configs/cells/monuseg.yaml); defaults if omitted."),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoints/last.pt.")] = False,
    overwrite: Overwrite = False,
    dry_run: DryRun = False,
    as_json: AsJson = False,
) -> None:
    """Train the hovernet-lite nucleus segmenter and evaluate it on the held-out images.

    Writes OUT/model.pt (use it with backend hovernet-lite, weights=OUT/model.pt),
    OUT/metrics.json, OUT/log.jsonl, OUT/config.yaml and OUT/checkpoints/last.pt.
    Exit code 2 for a bad config or missing data.
    """
    from pathmllm.train.cells import load_config, train

    result = _run_recipe(load_config, train, config, overrides, resume, overwrite, dry_run, as_json)
    if result is None:
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"held-out images after {result.steps} steps ({result.train_seconds / 60:.1f} min)")
    for col in ("image", "Dice", "AJI", "F1", "PQ"):
        t.add_column(col, justify="left" if col == "image" else "right")
    for name, m in result.metrics.get("per_image", {}).items():
        t.add_row(name, *(f"{m[k]:.3f}" for k in ("dice", "aji", "f1", "pq")))
    if "mean" in result.metrics:
        t.add_row("[bold]mean", *(f"[bold]{result.metrics['mean'][k]:.3f}" for k in ("dice", "aji", "f1", "pq")))
    console.print(t)
    console.print(f"weights: {result.model_path}\nmetrics: {result.out / 'metrics.json'}", highlight=False)


@app.command("embed")
def embed(
    overrides: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Argument(help="Config overrides as key.path=value, e.g. optim.steps=500 lora.enabled=true."),
    ] = None,
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--config", "-c", help="YAML recipe (e.g. configs/embed/lc25000.yaml); defaults if omitted."),
    ] = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    dry_run: DryRun = False,
    as_json: AsJson = False,
) -> None:
    """Contrastive training of the universal embedder (MLLM4PUE); several processes with
    [bold]accelerate launch -m pathmllm train embed ...[/bold].

    Writes OUT/model (a Hugging Face folder for `pathmllm embed --model OUT/model`),
    OUT/metrics.json, OUT/log.jsonl, OUT/config.yaml and OUT/checkpoints/last.
    Exit code 2 for a bad config or missing data.
    """
    from pathmllm.train.embed import load_config, train

    result = _run_recipe(load_config, train, config, overrides, resume, overwrite, dry_run, as_json)
    if result is None:
        return
    final = result.metrics.get("final") or {}
    line = f"{result.steps} steps in {result.train_seconds / 60:.1f} min"
    if final:
        line += f"; held-out zero-shot balanced accuracy {final['balanced_accuracy']:.3f} (n={final['n']})"
    _echo_summary(line, result)


@app.command("slide")
def slide(
    overrides: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Argument(help="Config overrides as key.path=value, e.g. init=out/s1/model data.train=qa.jsonl."),
    ] = None,
    stage: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--stage", help="1: CCAF + aggregators (contrastive, consistency); 2: projector alignment on "
                     "reports; 3: instruction tuning (LoRA)."),
    ] = None,
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--config", "-c", help="YAML recipe (e.g. configs/slide/virtual.yaml); defaults if omitted."),
    ] = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    dry_run: DryRun = False,
    as_json: AsJson = False,
) -> None:
    """Train one stage of the hierarchical slide LLM (MLLM-HWSI); stages 2 and 3 start from
    init=<previous stage's OUT/model>. Several processes with [bold]accelerate launch -m pathmllm train slide ...[/bold].

    Writes OUT/model (for `pathmllm slide ask --model OUT/model` and the next stage),
    OUT/metrics.json, OUT/log.jsonl, OUT/config.yaml and OUT/checkpoints/last.
    Exit code 2 for a bad config, missing data or a checkpoint that does not match the config.
    """
    from pathmllm.train.slide import load_config, train

    result = _run_recipe(partial(load_config, stage=stage), train, config, overrides, resume, overwrite, dry_run,
                         as_json)
    if result is None:
        return
    line = f"stage {result.metrics['stage']}: {result.steps} steps in {result.train_seconds / 60:.1f} min"
    val = result.metrics.get("val")
    if val and val.get("closed_accuracy") is not None:
        line += f"; held-out closed-question accuracy {val['closed_accuracy']:.3f} (n={val['n_closed']})"
    _echo_summary(line, result)


@app.command("ground")
def ground(
    overrides: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Argument(help="Config overrides as key.path=value, e.g. model.init=out/vl/model out=out/seg."),
    ] = None,
    stage: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--stage", help="vl: vision-language expert; seg: grounding expert ([SEG] head, mask "
                     "decoder, FFN); moe: two experts + router."),
    ] = None,
    config: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--config", "-c", help="YAML recipe (e.g. configs/ground/kvasir.yaml)."),
    ] = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    dry_run: DryRun = False,
    as_json: AsJson = False,
) -> None:
    """Train one stage of the MedPLIB-style grounding model (region prompts in, <SEG> masks out).
    Several processes with [bold]accelerate launch -m pathmllm train ground ...[/bold].

    Writes OUT/model (for `pathmllm ask --model OUT/model` and the next stage), OUT/metrics.json,
    OUT/log.jsonl (losses; MoE routing statistics), OUT/config.yaml and OUT/checkpoints/last.
    Exit code 2 for a bad config, missing data or a model folder that is not a grounding model.
    """
    from pathmllm.train.ground import load_config, train

    result = _run_recipe(partial(load_config, stage=stage), train, config, overrides, resume, overwrite, dry_run,
                         as_json)
    if result is None:
        return
    line = f"stage {result.metrics['stage']}: {result.steps} steps in {result.train_seconds / 60:.1f} min"
    ev = result.metrics.get("eval") or {}
    seg = ev.get("segmentation") or {}
    if seg.get("n"):
        line += f"; held-out mDice {seg['mDice']:.3f} (n={seg['n']})"
    if (ev.get("closed") or {}).get("n"):
        line += f"; closed accuracy {ev['closed']['accuracy']:.3f} (n={ev['closed']['n']})"
    _echo_summary(line, result)
