"""``pathmllm embed-patches``: features of a folder of patch images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def embed_patches(
    folder: Annotated[Path, typer.Argument(help="Folder of patch images (png, jpg, tif), searched recursively.")],
    encoder: Annotated[str, typer.Option("--encoder", "-e", help="Encoder name (pathmllm models ls).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output HDF5 (default: FOLDER/embeddings_<encoder>.h5).")] = None,  # noqa: UP045
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Local weights file or folder.")] = None,  # noqa: UP045
    batch_size: Annotated[int, typer.Option("--batch-size", "-b")] = 64,
    num_workers: Annotated[Optional[int], typer.Option("--num-workers", help="DataLoader worker processes (default: on the CPU none, a reader thread; on a GPU cores - 1).")] = None,  # noqa: UP045
    device: Annotated[str, typer.Option("--device")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16, "
                                           "fp16, int8 (CPU: dynamic int8 linear layers, ~1.5x faster).")] = "auto",
) -> None:
    """Embed every image in FOLDER; writes features (N, D) and the relative paths (N,)."""
    from rich.console import Console

    from pathmllm.encoders.folder import embed_folder

    console = Console(stderr=True)
    try:
        res = embed_folder(folder, encoder, out, weights=str(weights) if weights else None, batch_size=batch_size,
                           num_workers=num_workers, device=device, precision=precision)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        console.print(f"[bold red]error:[/] {str(exc).strip(chr(39))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(f"{res['n_images']} images -> {res['output']} ({res['embed_dim']}-d)"
                  + (f"; {len(res['skipped'])} unreadable, skipped (listed in the file's 'skipped' attribute)"
                     if res["skipped"] else ""), highlight=False, soft_wrap=True)
    raise typer.Exit(1 if res["skipped"] else 0)


app = typer.Typer(help="Universal embeddings (MLLM4PUE) of images, texts and image+text pairs.",
                  no_args_is_help=True)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Checkpoint folder, tiny preset (tiny-qwen2-vl, "
                                        "tiny-llava ...), weights-table name, or an image-only patch encoder.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output vectors.parquet.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1 ...")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b")]


def _run(kind: str, model: str, out: Path, device: str, batch_size: int, total: int, **inputs: object) -> None:
    from rich.console import Console
    from rich.progress import Progress

    from pathmllm.models.backbone import CheckpointError
    from pathmllm.models.embed_files import embed_to_file

    console = Console(stderr=True)
    try:
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task(f"embedding {kind}s", total=total)
            res = embed_to_file(kind, model, out, device=device, batch_size=batch_size,  # type: ignore[arg-type]
                                progress=lambda n: bar.advance(task, n), **inputs)  # type: ignore[arg-type]
    except (FileNotFoundError, KeyError, ValueError, TypeError, CheckpointError) as exc:
        console.print(f"[bold red]error:[/] {str(exc).strip(chr(39))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    for s in res["skipped"]:
        console.print(f"[yellow]skipped:[/] {s['error']}", highlight=False, soft_wrap=True)
    console.print(f"{res['n']} {kind} vectors ({res['dim']}-d) -> {res['output']}", highlight=False, soft_wrap=True)
    raise typer.Exit(1 if res["skipped"] else 0)


@app.command("images")
def embed_images(
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")],
    model: ModelOpt, out: OutOpt, device: DeviceOpt = "auto", batch_size: BatchOpt = 16,
) -> None:
    """Embed images; unreadable ones are reported and skipped (exit code 1)."""
    from pathmllm.models.embed_files import collect_images

    try:
        files = collect_images(paths)
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _run("image", model, out, device, batch_size, len(files), images=files)


@app.command("texts")
def embed_texts(
    texts: Annotated[Optional[list[str]], typer.Argument(help="Texts to embed.")] = None,  # noqa: UP045
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="Text file, one text per line.")] = None,  # noqa: UP045
    model: ModelOpt = "", out: OutOpt = Path("vectors.parquet"), device: DeviceOpt = "auto",
    batch_size: BatchOpt = 16,
) -> None:
    """Embed texts given on the command line or in a file (one per line)."""
    from pathmllm.models.embed_files import read_text_lines

    items = list(texts or [])
    if file is not None:
        items += read_text_lines(file)
    if not items or not model:
        typer.echo("error: give texts (arguments or --file) and --model", err=True)
        raise typer.Exit(2)
    _run("text", model, out, device, batch_size, len(items), texts=items)


@app.command("pairs")
def embed_pairs(
    manifest: Annotated[Path, typer.Argument(help="JSONL or CSV with 'image' and 'text' per record.")],
    model: ModelOpt, out: OutOpt, device: DeviceOpt = "auto", batch_size: BatchOpt = 16,
) -> None:
    """Embed image+text pairs listed in a manifest; other fields are kept as columns."""
    from pathmllm.models.embed_files import read_pairs

    try:
        records = read_pairs(manifest)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _run("pair", model, out, device, batch_size, len(records), records=records)
