"""``pathmllm index``: build and search an embedded vector index (FAISS + Parquet metadata)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer

app = typer.Typer(help="Embedded vector index: build from features, vectors or images/texts; search it.",
                  no_args_is_help=True)

#: errors that are the user's input, reported in one line with exit code 2
_USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError, KeyError, ImportError, RuntimeError)


def _fail(exc: BaseException) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {str(exc).strip(chr(39))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command("build")
def build(
    out_dir: Annotated[Path, typer.Argument(help="Index folder: created, or appended to when it is an index.")],
    features: Annotated[Optional[List[Path]], typer.Option("--features", "-f", help="Features .h5 (slide features, CLAM/TRIDENT, embed-patches) or a folder of them; repeatable.")] = None,  # noqa: UP045
    vectors: Annotated[Optional[List[Path]], typer.Option("--vectors", help="vectors.parquet of `pathmllm embed`; repeatable.")] = None,  # noqa: UP045
    images: Annotated[Optional[List[Path]], typer.Option("--images", help="Image files or folders to embed; repeatable.")] = None,  # noqa: UP045
    texts: Annotated[Optional[Path], typer.Option("--texts", help="Text file, one text per line, to embed.")] = None,  # noqa: UP045
    pairs: Annotated[bool, typer.Option("--pairs", help="Embed image i with text i as one vector.")] = False,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Embedder for images/texts (local folder or preset; default: the index's).")] = None,  # noqa: UP045
    kind: Annotated[Optional[str], typer.Option("--kind", help="flat (exact) | hnsw | ivf; new index only (default: flat).")] = None,  # noqa: UP045
    metric: Annotated[Optional[str], typer.Option("--metric", help="cosine | ip | l2; new index only (default: cosine).")] = None,  # noqa: UP045
    nlist: Annotated[Optional[int], typer.Option("--nlist", help="ivf: k-means cells (default: 4*sqrt(n)).")] = None,  # noqa: UP045
    hnsw_m: Annotated[int, typer.Option("--hnsw-m", help="hnsw: neighbours per node.")] = 32,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images/texts per embedder call.")] = 16,
    device: Annotated[str, typer.Option("--device")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Create an index in OUT_DIR (or add to the one there) and save it."""
    from rich.console import Console

    from pathmllm.index.api import build_index
    from pathmllm.index.vector_index import IndexParams

    console = Console(stderr=True)
    params = IndexParams(hnsw_m=hnsw_m, nlist=nlist)
    n_inputs = len(images or []) + (1 if texts else 0)
    try:
        if n_inputs:
            from rich.progress import Progress

            with Progress(console=console, transient=True) as bar:
                task = bar.add_task("embedding", total=None)
                res = build_index(out_dir, features=features or [], vectors=vectors or [], images=images or [],
                                  texts=texts, pairs=pairs, model=model, kind=kind, metric=metric, params=params,
                                  device=device, batch_size=batch_size,
                                  progress=lambda n: bar.advance(task, n))
        else:
            res = build_index(out_dir, features=features or [], vectors=vectors or [], kind=kind, metric=metric,
                              params=params)
    except _USER_ERRORS as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(res.to_dict(), indent=2))
        return
    verb = "created" if res.created else "appended to"
    console.print(f"{res.added} vectors from {len(res.sources)} sources; {verb} {res.folder} "
                  f"({res.count} vectors, {res.dim}-d, {res.kind}, {res.metric}, model {res.model})",
                  highlight=False, soft_wrap=True)


@app.command("search")
def search(
    index_dir: Annotated[Path, typer.Argument(help="Index folder (pathmllm index build).")],
    text: Annotated[Optional[List[str]], typer.Option("--text", "-t", help="Query text; repeatable. With --image: image+text queries.")] = None,  # noqa: UP045
    image: Annotated[Optional[List[Path]], typer.Option("--image", "-i", help="Query image; repeatable.")] = None,  # noqa: UP045
    vector_file: Annotated[Optional[Path], typer.Option("--vector-file", help="Query vectors: vectors.parquet, features .h5 or .npy (N, D).")] = None,  # noqa: UP045
    k: Annotated[int, typer.Option("-k", help="Hits per query.")] = 10,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Embedder for the queries (default: the index's model).")] = None,  # noqa: UP045
    nprobe: Annotated[Optional[int], typer.Option("--nprobe", help="ivf: cells visited per query.")] = None,  # noqa: UP045
    ef_search: Annotated[Optional[int], typer.Option("--ef-search", help="hnsw: candidate list size.")] = None,  # noqa: UP045
    allow_model_mismatch: Annotated[bool, typer.Option("--allow-model-mismatch", help="Warn instead of failing when the query model differs from the index's.")] = False,
    device: Annotated[str, typer.Option("--device")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print queries and hits as JSON.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the hits to .csv, .parquet or .json.")] = None,  # noqa: UP045
) -> None:
    """Nearest vectors of INDEX_DIR to a text, an image, an image with a text, or a vector file."""
    from pathmllm.index.api import search_index

    try:
        if out is not None and out.suffix.lower() not in (".csv", ".parquet", ".json"):
            raise ValueError(f"--out {out}: use a .csv, .parquet or .json file name")
        res = search_index(index_dir, texts=text or [], images=image or [], vector_file=vector_file, k=k,
                           model=model, device=device, nprobe=nprobe, ef_search=ef_search,
                           strict_model=not allow_model_mismatch)
    except _USER_ERRORS as exc:
        _fail(exc)
    hits = res.hits
    if out is not None:
        _write_hits(hits, out)
    if as_json:
        records = json.loads(hits.to_json(orient="records"))
        typer.echo(json.dumps({"index": str(index_dir), "model": res.model, "queries": res.queries,
                               "hits": records}, indent=2, default=str))
    elif out is None or len(hits) <= 50:
        _print_table(hits, res.queries)


def _write_hits(hits: Any, out: Path) -> None:
    from pathmllm.utils.atomic import atomic_path

    with atomic_path(out) as tmp:
        suffix = out.suffix.lower()
        if suffix == ".csv":
            hits.to_csv(tmp, index=False)
        elif suffix == ".parquet":
            hits.to_parquet(tmp, index=False)
        else:
            hits.to_json(tmp, orient="records", indent=2)


def _print_table(hits: Any, queries: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for q in queries:
        label = " + ".join(str(q[key]) for key in ("image", "text", "source") if q.get(key) is not None)
        table = Table(title=f"query {q['query']}: {label}", title_justify="left")
        part = hits[hits["query"] == q["query"]].drop(columns=["query"])
        for col in part.columns:
            table.add_column(str(col), justify="right" if col in ("rank", "id", "score", "x", "y") else "left",
                             overflow="fold")
        for row in part.itertuples(index=False):
            table.add_row(*(f"{v:.4f}" if isinstance(v, float) else _short(v) for v in row))
        console.print(table)


def _short(v: Any, n: int = 80) -> str:
    s = "" if v is None else str(v)
    return s if len(s) <= n else s[: n - 1] + "…"
