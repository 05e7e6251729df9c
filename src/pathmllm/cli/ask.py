"""``pathmllm ask`` / ``pathmllm ground``: pixel-level prompting of a grounding model (MedPLIB style).

The logic lives in :mod:`pathmllm.models.grounding.prompting`; this module only parses options,
prints and maps errors to exit codes (2: bad input, 1: ``ground`` got no mask).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

ImageArg = Annotated[Path, typer.Argument(help="An image (PNG, JPEG, ...) or a whole-slide file (SVS, NDPI, TIFF ...).")]
ModelOpt = Annotated[Path, typer.Option("--model", "-m", help="Grounding model folder (written by `pathmllm train ground`).")]
OutOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--out", "-o", help="Folder for <name>_mask.png, <name>_overlay.png (and .geojson); default: here."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the answer and written files as JSON.")]
TokensOpt = Annotated[int, typer.Option("--max-new-tokens", min=1, help="Longest answer in tokens.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda ...")]
BoxOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--box", help="Region box X0,Y0,X1,Y1 in pixels (x right, y down; X1, Y1 exclusive). "
                               "On a slide: level-0 pixels (required)."),
]
MppOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option("--mpp", help="Slides only: µm/px at which the window around --box is read (e.g. 0.5)."),
]
ContextOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option("--context", help="Slides only: enlarge the box by this fraction of its size on each side "
                                   "(default 0.5 for ask, 0 for ground)."),
]
SlideMppOpt = Annotated[
    Optional[float],  # noqa: UP045
    typer.Option("--slide-mpp", help="Slides only: the slide's own level-0 µm/px, when its metadata lacks it."),
]


def _fail(message: str, code: int = 2) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _run(image: Path, question: str, model_dir: Path, out: Path | None, *, point: str | None, box: str | None,
         mask: Path | None, polygon: str | None, radius: int, mpp: float | None, context: float,
         slide_mpp: float | None, device: str, max_new_tokens: int, as_json: bool, ground: bool) -> None:
    from pathmllm.models.grounding.model import REGION_START
    from pathmllm.models.grounding.prompting import (
        InputImage,
        PromptError,
        Region,
        parse_box,
        read_window,
        region_from_options,
        write_outputs,
    )

    inp: InputImage | None = None
    try:
        # -- cheap checks first: options, image, region; the model is loaded last
        given = [n for n, v in (("--point", point), ("--box", box), ("--mask", mask), ("--polygon", polygon))
                 if v is not None]
        if len(given) > 1:
            raise PromptError(f"give at most one region prompt; got {' and '.join(given)}")
        if not question.strip():
            raise PromptError("the question is empty")
        from pathmllm.models.grounding.prompting import load_input

        inp = load_input(image, slide_mpp=slide_mpp)
        region: Region | None
        if inp.is_slide:
            if box is None:
                others = f" ({given[0]} is not supported on slides)" if given else ""
                raise PromptError(f"{image} is a whole-slide image: on a slide, give --box in level-0 pixels "
                                  f"(X0,Y0,X1,Y1; the slide is {inp.slide.dimensions[0]}x{inp.slide.dimensions[1]})"
                                  f"{others}")
            if mpp is None:
                raise PromptError(f"{image} is a whole-slide image: give --mpp, the µm/px at which to read the "
                                  "window around --box (e.g. --mpp 0.5)")
            b = parse_box(box)
            pixels, window, box_m = read_window(inp.slide, b, mpp, context=context)
            inp.pixels, inp.window = pixels, window
            region = None if ground else Region("box", box_m, {"box": list(b), "level0": True,
                                                               "window": window.to_dict()})
        else:
            if ground and box is not None:
                raise PromptError("--box on `pathmllm ground` picks the area of a whole-slide image; on a plain "
                                  "image use `pathmllm ask --box` for a region prompt, or crop the image")
            if mpp is not None or slide_mpp is not None:
                raise PromptError(f"{image} is a plain image: --mpp and --slide-mpp apply to whole-slide images only")
            region = region_from_options(inp.size_hw, point=point, box=box, mask=mask, polygon=polygon,
                                         radius=radius)
        if region is None and REGION_START in question:
            raise PromptError(f"the question marks a {REGION_START} but no region was given: add --point, --box, "
                              "--mask or --polygon")
    except PromptError as exc:
        _fail(str(exc))
    assert inp is not None

    from pathmllm.models.grounding.model import GroundingLM

    try:
        model = GroundingLM.from_pretrained(model_dir, device=device)
    except (FileNotFoundError, OSError, ValueError, KeyError) as exc:  # CheckpointError is a FileNotFoundError
        _fail(f"{model_dir}: not a usable grounding model: {exc}")
    try:
        answer, masks = model.generate(inp.pixels, question, region_mask=None if region is None else region.mask,
                                       max_new_tokens=max_new_tokens)
    except ValueError as exc:
        _fail(str(exc))
    answer = answer.strip()
    written: dict[str, Any] = {"masks": [], "overlay": None, "geojson": None, "mask_pixels": 0}
    if masks is not None:
        written = write_outputs(inp, masks, out if out is not None else Path.cwd(),
                                region=None if region is None else region.mask, answer=answer)
    info = {
        "answer": answer,
        "grounded": masks is not None,
        **written,
        "region": None if region is None else region.to_dict(),
        "image": str(image),
        "slide": inp.is_slide,
        "window": None if inp.window is None else inp.window.to_dict(),
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        typer.echo(answer)
        for p in written["masks"]:
            typer.echo(f"mask: {p}")
        if written["overlay"]:
            typer.echo(f"overlay: {written['overlay']}")
        if written["geojson"]:
            typer.echo(f"geojson (level-0): {written['geojson']}")
    if ground and masks is None:
        _fail("the model wrote no <SEG> token, so it gave no mask (none was written); rephrase the request "
              "(e.g. \"segment the ...\") or use a model trained for segmentation", code=1)


def ask(
    image: ImageArg,
    question: Annotated[str, typer.Argument(help="The question; mark the region with <region> (else it is appended).")],
    model: ModelOpt,
    point: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--point", help="Region: a disk of --radius px around X,Y (pixels, x right, y down)."),
    ] = None,
    box: BoxOpt = None,
    mask: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--mask", help="Region: a mask image of the image's size (pixels >= 1 are the region)."),
    ] = None,
    polygon: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--polygon", help="Region: a polygon \"x1,y1 x2,y2 x3,y3 ...\" in pixels."),
    ] = None,
    radius: Annotated[int, typer.Option("--radius", help="Radius in px of the --point disk.")] = 20,
    out: OutOpt = None,
    mpp: MppOpt = None,
    context: ContextOpt = None,
    slide_mpp: SlideMppOpt = None,
    device: DeviceOpt = "auto",
    max_new_tokens: TokensOpt = 64,
    as_json: JsonOpt = False,
) -> None:
    """Ask a grounding model about an image, optionally about one region of it.

    At most one of --point / --box / --mask / --polygon. When the answer holds <SEG>, the mask is
    written as <name>_mask.png (0/255) and <name>_overlay.png in --out. On a whole-slide image,
    --box (level-0 px) and --mpp are required; a window around the box is read, and the mask is
    also written as a QuPath GeoJSON in level-0 coordinates. Exit code 2 for bad input.
    """
    _run(image, question, model, out, point=point, box=box, mask=mask, polygon=polygon, radius=radius, mpp=mpp,
         context=0.5 if context is None else context, slide_mpp=slide_mpp, device=device,
         max_new_tokens=max_new_tokens, as_json=as_json, ground=False)


def ground(
    image: ImageArg,
    request: Annotated[str, typer.Argument(help="What to segment, e.g. \"segment the polyp\".")],
    model: ModelOpt,
    box: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--box", help="Slides only (required there): the level-0 area X0,Y0,X1,Y1 to segment in."),
    ] = None,
    out: OutOpt = None,
    mpp: MppOpt = None,
    context: ContextOpt = None,
    slide_mpp: SlideMppOpt = None,
    device: DeviceOpt = "auto",
    max_new_tokens: TokensOpt = 64,
    as_json: JsonOpt = False,
) -> None:
    """Segment what the request names (no region prompt); writes <name>_mask.png and <name>_overlay.png.

    If the model writes no <SEG> token there is no mask: it says so and exits with code 1
    (a mask is never invented). Exit code 2 for bad input.
    """
    _run(image, request, model, out, point=None, box=box, mask=None, polygon=None, radius=0, mpp=mpp,
         context=0.0 if context is None else context, slide_mpp=slide_mpp, device=device,
         max_new_tokens=max_new_tokens, as_json=as_json, ground=True)
