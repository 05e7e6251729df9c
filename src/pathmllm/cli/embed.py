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
    num_workers: Annotated[Optional[int], typer.Option("--num-workers")] = None,  # noqa: UP045
    device: Annotated[str, typer.Option("--device")] = "auto",
) -> None:
    """Embed every image in FOLDER; writes features (N, D) and the relative paths (N,)."""
    from rich.console import Console

    from pathmllm.encoders.folder import embed_folder

    console = Console(stderr=True)
    try:
        res = embed_folder(folder, encoder, out, weights=str(weights) if weights else None, batch_size=batch_size,
                           num_workers=num_workers, device=device)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        console.print(f"[bold red]error:[/] {str(exc).strip(chr(39))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(f"{res['n_images']} images -> {res['output']} ({res['embed_dim']}-d)"
                  + (f"; {len(res['skipped'])} unreadable, skipped (listed in the file's 'skipped' attribute)"
                     if res["skipped"] else ""), highlight=False, soft_wrap=True)
    raise typer.Exit(1 if res["skipped"] else 0)
