"""``pathmllm models``: what encoders are registered and which have local weights."""

from __future__ import annotations

import json
from typing import Annotated

import typer

app = typer.Typer(help="Registered models and their local weights.", no_args_is_help=True)


@app.command("ls")
def ls(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List registered patch encoders and vision-language models, and whether their weights are available locally.

    Weights are looked up in --weights paths and $PATHMLLM_WEIGHTS (weights.yaml or NAME/).
    """
    from pathmllm.encoders.registry import list_encoders
    from pathmllm.models.backbone import list_vlms

    rows = list_encoders()
    vlms = list_vlms()
    if as_json:
        typer.echo(json.dumps(rows + vlms, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="patch encoders")
    for col in ("name", "family", "dim", "input", "µm/px", "licence", "weights"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["name"], r["family"], str(r["embed_dim"]), str(r["input_size"]),
                  f"{r['mpp']:g}" if r["mpp"] else "-", r["licence"], r["weights"])
    console = Console()
    console.print(t)
    v = Table(title="vision-language models (pathmllm embed, train embed; also as encoder mllm:<name>)")
    for col in ("name", "family", "weights"):
        v.add_column(col, overflow="fold")
    for r in vlms:
        v.add_row(r["name"], r["family"], r["weights"])
    console.print(v)
