"""``pathmllm data``: dataset converters."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Convert public datasets to the formats the recipes read.", no_args_is_help=True)


@app.command("kvasir")
def kvasir(
    root: Annotated[Path, typer.Argument(help="Kvasir-SEG folder (images/, masks/, bboxes.json).")],
    out: Annotated[Path, typer.Argument(help="MeCoVQA JSON to write (masks go to its folder's masks/ and regions/).")],
    split: Annotated[str, typer.Option(help="all, train or test (a seeded split; every record keeps its split).")] = "all",
    test_fraction: Annotated[float, typer.Option(help="Fraction of images held out as test.")] = 0.3,
    seed: Annotated[int, typer.Option(help="Seed of the train/test split.")] = 0,
    region_questions: Annotated[bool, typer.Option(help="Add the polyp-box / background-box yes/no questions.")] = True,
    limit: Annotated[int | None, typer.Option(help="Keep the first N images of the split.")] = None,
) -> None:
    """Kvasir-SEG -> MeCoVQA: "Segment the polyp." with its mask, and "Is there a polyp in this region?"
    on the polyp's box (boxes rescaled from the original resolution) and on a background box."""
    import json

    from pathmllm.data.mecovqa import kvasir_to_mecovqa

    try:
        path = kvasir_to_mecovqa(root, out, split=split, test_fraction=test_fraction, seed=seed,  # type: ignore[arg-type]
                                 region_questions=region_questions, limit=limit)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    records = json.loads(path.read_text())
    kinds: dict[str, int] = {}
    for r in records:
        k = r["id"].rsplit("-", 1)[-1]
        kinds[k] = kinds.get(k, 0) + 1
    typer.echo(f"{len(records)} records ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}) -> {path}")
