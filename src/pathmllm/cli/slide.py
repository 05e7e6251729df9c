"""``pathmllm slide``: info, tile, export-patches, cells, features, ask, report."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

app = typer.Typer(help="Read, tile and export whole-slide images.", no_args_is_help=True)


class Engine(str, Enum):
    local = "local"
    ray = "ray"


class Backend(str, Enum):
    auto = "auto"
    openslide = "openslide"
    tifffile = "tifffile"
    wsidicom = "wsidicom"
    pydicom = "pydicom"
    pil = "pil"


class ImageFormat(str, Enum):
    png = "png"
    jpeg = "jpeg"


class Container(str, Enum):
    folder = "folder"
    tar = "tar"
    zip = "zip"


MppOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option("--mpp", help="µm per level-0 pixel, overriding the slide's metadata (needed when it has none)."),
]
BackendOpt = Annotated[Backend, typer.Option("--backend", help="Reader to use; auto picks by file type.")]
TargetMpp = Annotated[float, typer.Option("--target-mpp", help="µm/px of the patches (0.5 ≈ 20x).")]
PatchSize = Annotated[int, typer.Option("--patch-size", help="Patch side in px at --target-mpp.")]
Overlap = Annotated[int, typer.Option("--overlap", help="Overlap between patches, px at --target-mpp.")]
MinTissue = Annotated[float, typer.Option("--min-tissue", help="Minimum tissue fraction of a kept patch.")]
RegionSize = Annotated[int, typer.Option("--region-size", help="Region side in patches (16 = 4096 px).")]
Workers = Annotated[Optional[int], typer.Option("--workers", "-j", help="Worker processes (default: all cores).")]  # noqa: UP045
EngineOpt = Annotated[Engine, typer.Option("--engine", help="local process pool, or a Ray cluster.")]
RayAddress = Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster address (default: start a local one).")]  # noqa: UP045
Inputs = Annotated[list[Path], typer.Argument(help="Slide files and/or folders of slides.")]
Out = Annotated[Path, typer.Option("--out", "-o", help="Output folder (one sub-folder per slide).")]


@app.command("info")
def info(
    slide: Annotated[Path, typer.Argument(help="A slide file (or a DICOM series folder).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    backend: BackendOpt = Backend.auto,
    mpp: MppOpt = None,
) -> None:
    """Dimensions, levels, µm/px, objective, vendor and backend of a slide."""
    from pathmllm.wsi import SlideError, open_slide

    try:
        with open_slide(slide, backend=backend.value, mpp=mpp) as s:
            data = s.info()
    except SlideError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=data["name"], show_header=False)
    mpp_txt = f"{data['mpp']:g}" if data["mpp"] else f"unknown ({data['mpp_problem']})"
    for k, v in [
        ("path", data["path"]),
        ("backend", data["backend"]),
        ("vendor", data["vendor"] or "-"),
        ("dimensions", "{} x {}".format(*data["dimensions"])),
        ("µm/px", mpp_txt),
        ("µm/px source", data["mpp_source"] or "-"),
        ("objective", f"{data['objective_power']:g}x" if data["objective_power"] else "-"),
        ("magnification (from µm/px)", f"{data['magnification']:g}x" if data["magnification"] else "-"),
    ]:
        t.add_row(k, str(v))
    console.print(t)
    lv = Table("level", "width x height", "downsample", "µm/px")
    for level in data["levels"]:
        lv.add_row(
            str(level["level"]), "{} x {}".format(*level["dimensions"]), f"{level['downsample']:g}",
            f"{level['mpp']:g}" if level["mpp"] else "-",
        )
    console.print(lv)


def _fail(message: str, code: int = 1) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _tiling(target_mpp: float, patch_size: int, min_tissue: float, region_size: int, overlap: int = 0) -> Any:
    """The TilingConfig of the command's options; a bad value exits with code 2."""
    from pathmllm.wsi.tiling import TilingConfig

    try:
        return TilingConfig(target_mpp=target_mpp, patch_size=patch_size, overlap=overlap,
                            min_tissue=min_tissue, region_size=region_size)
    except ValueError as exc:
        _fail(str(exc), code=2)


def _layouts(layout: list[str] | None) -> tuple[str, ...]:
    from pathmllm.wsi.pipeline import LAYOUTS

    for lay in layout or []:
        if lay not in LAYOUTS:
            _fail(f"--layout {lay!r}: choose from {', '.join(LAYOUTS)}", code=2)
    return tuple(layout or ())


def _discover(inputs: list[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    from pathmllm.wsi.discover import find_slides

    found = find_slides(list(inputs))
    if not found.slides:
        reasons = "; ".join(f"{p}: {why}" for p, why in found.problems) or "nothing given"
        _fail(f"no slides to process ({reasons})", code=2)
    return found.slides, found.problems


def _run(
    title: str, slides: list[Path], problems: list[tuple[str, str]], task: Any, kwargs: dict[str, Any],
    engine: Engine, workers: int | None, ray_address: str | None, out: Path, as_json: bool,
    ray_options: dict[str, Any] | None = None,
) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pathmllm.wsi.jobs import Failure, run_batch, write_report

    console = Console(stderr=True)
    out.mkdir(parents=True, exist_ok=True)
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"), console=console, disable=as_json,
    ) as bar:
        tid = bar.add_task(title, total=len(slides), last="")

        def progress(path: str, ok: bool) -> None:
            bar.update(tid, advance=1, last=("" if ok else "[red]failed: ") + Path(path).name)

        report = run_batch(
            slides, task, kwargs, engine=engine.value, workers=workers, progress=progress, ray_address=ray_address,
            ray_options=ray_options,
        )
    for p, why in problems:
        report.failures.append(Failure(slide=Path(p).name, path=p, error="InputError", message=f"{p}: {why}"))
    write_report(report, out)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _summary(console, report, out)
    raise typer.Exit(0 if report.ok else 1)


def _summary(console: Any, report: Any, out: Path) -> None:
    from rich.table import Table

    t = Table(title=f"{len(report.results)} done, {len(report.failures)} failed in {report.seconds:.1f} s")
    t.add_column("slide")
    t.add_column("status")
    t.add_column("patches", justify="right")
    extra = next((k for k in ("n_cells", "embed_dim") if any(k in r for r in report.results)), "n_regions")
    t.add_column({"n_cells": "cells", "embed_dim": "dim", "n_regions": "regions"}[extra], justify="right")
    t.add_column("output", overflow="fold")
    for r in report.results:
        t.add_row(r["slide"], r["status"], str(r.get("n_patches", "")), str(r.get(extra, "")),
                  r.get("store") or r.get("output", ""))
    for f in report.failures:
        t.add_row(f.slide, f"[red]{f.error}", "", "", "see below")
    console.print(t)
    for f in report.failures:
        console.print(f"[red]✗ {f.slide}[/] ({f.error}): {f.message}", highlight=False, soft_wrap=True)
    if report.failures:
        console.print(f"[red]{len(report.failures)} slide(s) failed[/]; details in {out / 'errors.json'}", soft_wrap=True)


@app.command("tile")
def tile(
    inputs: Inputs,
    out: Out,
    target_mpp: TargetMpp = 0.5,
    patch_size: PatchSize = 256,
    overlap: Overlap = 0,
    min_tissue: MinTissue = 0.25,
    region_size: RegionSize = 16,
    mpp: MppOpt = None,
    backend: BackendOpt = Backend.auto,
    workers: Workers = None,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddress = None,
    layout: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--layout", help="Also place coords where CLAM and/or TRIDENT look (repeatable: clam, trident)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Redo slides already done.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Find tissue and lay patch grids and regions over many slides (resumable).

    Writes OUT/<slide>/<mpp>mpp_<size>px/ per slide, plus OUT/summary.json and OUT/errors.json.
    Exit code 1 if any slide failed, 2 if no slide was found.
    """
    from pathmllm.wsi.pipeline import tile_slide

    layouts = _layouts(layout)
    cfg = _tiling(target_mpp, patch_size, min_tissue, region_size, overlap)
    slides, problems = _discover(inputs)
    kwargs = {"out": str(out), "config": cfg, "backend": backend.value, "mpp": mpp,
              "layouts": layouts, "force": force}
    _run("tiling", slides, problems, tile_slide, kwargs, engine, workers, ray_address, out, as_json)


@app.command("export-patches")
def export_patches(
    inputs: Inputs,
    out: Out,
    fmt: Annotated[ImageFormat, typer.Option("--format", help="Image format of the patches.")] = ImageFormat.png,
    container: Annotated[Container, typer.Option("--container", help="A folder of files, or one tar/zip per slide.")] = Container.folder,
    target_mpp: TargetMpp = 0.5,
    patch_size: PatchSize = 256,
    overlap: Overlap = 0,
    min_tissue: MinTissue = 0.25,
    region_size: RegionSize = 16,
    mpp: MppOpt = None,
    backend: BackendOpt = Backend.auto,
    workers: Workers = None,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddress = None,
    quality: Annotated[int, typer.Option("--quality", help="JPEG quality.")] = 90,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Write the patches of many slides as PNG/JPEG files (tiling first where needed).

    Output: OUT/<slide>/<setting>/patches/ or patches.tar / patches.zip.
    """
    from pathmllm.wsi.pipeline import tile_and_export

    cfg = _tiling(target_mpp, patch_size, min_tissue, region_size, overlap)
    slides, problems = _discover(inputs)
    # patches of one slide are read in parallel; with Ray, each slide is one task
    per_slide_workers = workers if engine == Engine.local else 1
    kwargs = {"out": str(out), "config": cfg, "backend": backend.value, "mpp": mpp, "fmt": fmt.value,
              "container": container.value, "workers": per_slide_workers, "quality": quality}
    batch_workers = 1 if engine == Engine.local else workers
    _run("exporting", slides, problems, tile_and_export, kwargs, engine, batch_workers, ray_address, out, as_json)


@app.command("cells")
def cells(
    inputs: Inputs,
    out: Out,
    segmenter: Annotated[str, typer.Option("--segmenter", help="Nucleus backend: a registered name (watershed, ...) or 'module:Class'.")] = "watershed",
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Local checkpoint for backends that need weights.")] = None,  # noqa: UP045
    cell_expansion: Annotated[float, typer.Option("--cell-expansion-um", help="Grow nuclei by this many µm into cell outlines.")] = 5.0,
    target_mpp: TargetMpp = 0.5,
    patch_size: PatchSize = 256,
    min_tissue: MinTissue = 0.25,
    region_size: RegionSize = 16,
    mpp: MppOpt = None,
    backend: BackendOpt = Backend.auto,
    workers: Workers = None,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddress = None,
    force: Annotated[bool, typer.Option("--force", help="Redo slides already done.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Segment and measure the nuclei of many slides (tiling first where needed; resumable).

    Writes cells.parquet, cells_per_patch.parquet, cells.geojson (QuPath cells) and overlays
    into each slide's store OUT/<slide>/<setting>/.
    """
    from pathmllm.cells.base import segmenter_class
    from pathmllm.cells.slide import CellConfig, segment_slide

    tcfg = _tiling(target_mpp, patch_size, min_tissue, region_size)
    try:
        segmenter_class(segmenter)
    except ValueError as exc:
        _fail(str(exc), code=2)
    ccfg = CellConfig(backend=segmenter, weights=str(weights) if weights else None, cell_expansion_um=cell_expansion)
    slides, problems = _discover(inputs)
    per_slide_workers = workers if engine == Engine.local else 1
    kwargs = {"out": str(out), "tiling": tcfg, "cells": ccfg, "backend": backend.value, "mpp": mpp,
              "workers": per_slide_workers, "force": force}
    batch_workers = 1 if engine == Engine.local else workers
    _run("cells", slides, problems, segment_slide, kwargs, engine, batch_workers, ray_address, out, as_json)


@app.command("features")
def features(
    inputs: Inputs,
    out: Out,
    encoder: Annotated[str, typer.Option("--encoder", "-e", help="Encoder name (pathmllm models ls), or timm:/hf:/open_clip: + architecture.")],
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Local weights file or folder (default: $PATHMLLM_WEIGHTS).")] = None,  # noqa: UP045
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Patches per forward pass.")] = 64,
    num_workers: Annotated[Optional[int], typer.Option("--num-workers", help="DataLoader workers reading patches (default: cores - 1).")] = None,  # noqa: UP045
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16/fp16 on GPU, fp32 on CPU), fp32, bf16, fp16, int8 (CPU: dynamic int8 linear layers, ~1.5x faster, features within ~0.5% cosine).")] = "auto",
    random_weights: Annotated[bool, typer.Option("--random-weights", help="Random weights when none are found (benchmarks only).")] = False,
    target_mpp: TargetMpp = 0.5,
    patch_size: PatchSize = 256,
    min_tissue: MinTissue = 0.25,
    region_size: RegionSize = 16,
    mpp: MppOpt = None,
    backend: BackendOpt = Backend.auto,
    engine: EngineOpt = Engine.local,
    workers: Annotated[Optional[int], typer.Option("--workers", "-j", help="With --engine ray: slides at once (one per GPU when on GPU).")] = None,  # noqa: UP045
    ray_address: RayAddress = None,
    layout: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--layout", help="Also write CLAM (h5_files, pt_files) and/or TRIDENT (features_<enc>/) files."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute slides already done.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Patch features of many slides with one encoder (tiling first where needed; resumable).

    Writes features_<encoder>.h5 (TRIDENT layout plus region and slide means) into each store.
    """
    from pathmllm.encoders.extract import (
        ExtractConfig,
        autocast_dtype,
        extract_slide_features,
        resolve_device,
    )
    from pathmllm.encoders.registry import encoder_spec

    layouts = _layouts(layout)
    try:
        autocast_dtype(resolve_device(device), precision)  # type: ignore[arg-type]
    except (ValueError, RuntimeError) as exc:
        _fail(f"--precision {precision} --device {device}: {exc}", code=2)
    try:
        spec, _ = encoder_spec(encoder)
    except (KeyError, ValueError) as exc:
        _fail(str(exc).strip("'\""), code=2)
    if precision == "int8" and spec.family == "handcrafted":
        _fail(f"--precision int8 quantises linear layers, and encoder {encoder!r} has none (int8 would change "
              "nothing): use fp32", code=2)
    tcfg = _tiling(target_mpp, patch_size, min_tissue, region_size)
    ecfg = ExtractConfig(encoder=encoder, weights=str(weights) if weights else None, batch_size=batch_size,
                         num_workers=num_workers, device=device, precision=precision,  # type: ignore[arg-type]
                         allow_random=random_weights)
    slides, problems = _discover(inputs)
    kwargs = {"out": str(out), "config": ecfg, "tiling": tcfg, "backend": backend.value, "mpp": mpp,
              "layouts": layouts, "force": force}
    ray_options = {"num_gpus": 1} if engine == Engine.ray and device != "cpu" else None
    _run("features", slides, problems, extract_slide_features, kwargs, engine,
         1 if engine == Engine.local else workers, ray_address, out, as_json, ray_options)


def _register_ask() -> None:
    from pathmllm.cli.slide_ask import ask, report

    app.command("ask")(ask)
    app.command("report")(report)


_register_ask()
