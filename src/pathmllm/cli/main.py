"""Entry point of the ``pathmllm`` command. Heavy imports happen inside commands."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer

from pathmllm import __version__
from pathmllm.cli import ask as ask_cmd
from pathmllm.cli import bench as bench_cmd
from pathmllm.cli import data as data_cmd
from pathmllm.cli import embed as embed_cmd
from pathmllm.cli import index as index_cmd
from pathmllm.cli import models as models_cmd
from pathmllm.cli import slide as slide_cmd
from pathmllm.cli import train as train_cmd

app = typer.Typer(
    name="pathmllm",
    help="Multimodal LLMs for computational pathology: slides, embeddings, grounding.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.add_typer(slide_cmd.app, name="slide")
app.add_typer(models_cmd.app, name="models")
app.add_typer(train_cmd.app, name="train")
app.add_typer(index_cmd.app, name="index")
app.add_typer(bench_cmd.app, name="bench")
app.add_typer(data_cmd.app, name="data")
app.command("embed-patches")(embed_cmd.embed_patches)
app.command("ask")(ask_cmd.ask)
app.command("ground")(ask_cmd.ground)
app.add_typer(embed_cmd.app, name="embed")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pathmllm {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        Optional[bool],  # noqa: UP045 - typer needs Optional here on Python 3.10
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv for debug).")] = 0,
) -> None:
    """pathmllm: whole-slide pipelines and multimodal models for pathology."""
    level = logging.WARNING - 10 * min(verbose, 2)
    from rich.console import Console
    from rich.logging import RichHandler

    # logs go to stderr, so machine-readable output (--json) on stdout stays clean
    handler = RichHandler(show_path=False, console=Console(stderr=True))
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
