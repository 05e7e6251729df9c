"""Score a nucleus segmentation backend on MoNuSeg-style images: AJI, Dice, F1, PQ per image.

Any registered backend (``pathmllm.cells.base.build_segmenter``) runs on each image at its
µm/px (the XML's ``MicronsPerPixel``, else 0.25) and is scored against the rasterised
annotations with ``pathmllm.cells.metrics.score``. Prints one row per image (AJI, Dice,
detection F1, PQ, true and predicted nucleus counts, seconds to segment) and the means.
Time is that of ``segment`` alone, after one warm-up call (lazy imports), one process.

Run::

    .venv/bin/python benchmarks/eval_cells_monuseg.py                          # watershed
    .venv/bin/python benchmarks/eval_cells_monuseg.py --backend hovernet-lite --option weights=run/model.pt
    .venv/bin/python benchmarks/eval_cells_monuseg.py --option min_area_um2=10 --option shape_weight=2
    .venv/bin/python benchmarks/eval_cells_monuseg.py --downsample 2           # as at 20x (0.5 µm/px)
    .venv/bin/python benchmarks/eval_cells_monuseg.py --json benchmarks/_work/ws.json

The images stay where they are (MoNuSeg is CC BY-NC-SA; nothing is copied into the repo).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, print_machine, table  # noqa: E402

from pathmllm.cells.base import NucleusSegmenter, build_segmenter  # noqa: E402
from pathmllm.cells.datasets import NucleusSample, load_monuseg_folder  # noqa: E402
from pathmllm.cells.metrics import score  # noqa: E402

DEFAULT_FOLDER = DATA / "nuclei" / "monuseg-train"


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value``; the value is a Python literal when it parses as one, else a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option wants KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value: Any = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def downsample(sample: NucleusSample, factor: int) -> NucleusSample:
    """The image box-averaged ``factor`` x, the labels sampled at the new pixel centres."""
    if factor == 1:
        return sample
    h, w = sample.labels.shape
    nh, nw = h // factor, w // factor
    image = np.asarray(Image.fromarray(sample.image[: nh * factor, : nw * factor]).resize((nw, nh), Image.BOX))
    off = factor // 2
    labels = sample.labels[off::factor, off::factor][:nh, :nw]
    return NucleusSample(sample.name, image, np.ascontiguousarray(labels), sample.mpp * factor)


def evaluate(
    seg: NucleusSegmenter, folder: Path, names: list[str] | None = None, factor: int = 1
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per-image rows and their means (counts summed)."""
    samples = [downsample(s, factor) for s in load_monuseg_folder(folder, names=names)]
    seg.segment(samples[0].image[:128, :128], samples[0].mpp)  # warm-up: lazy imports, caches
    rows = []
    for s in samples:
        t0 = time.perf_counter()
        pred = seg.segment(s.image, s.mpp)
        seconds = time.perf_counter() - t0
        sc = score(s.labels, pred)
        rows.append({"image": s.name, "mpp": s.mpp, "size": f"{s.image.shape[1]}x{s.image.shape[0]}",
                     **sc.to_dict(), "seconds": seconds})
    means = {k: float(np.mean([r[k] for r in rows])) for k in ("aji", "dice", "f1", "pq", "seconds")}
    means.update(n_true=int(sum(r["n_true"] for r in rows)), n_pred=int(sum(r["n_pred"] for r in rows)))
    return rows, means


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="watershed", help="registered nucleus segmenter, or package.module:Class (default: watershed)")
    ap.add_argument("--folder", type=Path, default=DEFAULT_FOLDER,
                    help=f"MoNuSeg-style folder of <name>.tif + <name>.xml (default: {DEFAULT_FOLDER})")
    ap.add_argument("--option", type=parse_option, action="append", default=[], metavar="KEY=VALUE",
                    help="keyword argument for the backend's constructor (repeatable)")
    ap.add_argument("--names", nargs="*", help="only these images (file stems)")
    ap.add_argument("--downsample", type=int, default=1, metavar="N",
                    help="box-average images N x first (2: 40x data as 20x); labels follow")
    ap.add_argument("--json", type=Path, help="also write the rows and means here")
    args = ap.parse_args(argv)
    if args.downsample < 1:
        ap.error("--downsample must be >= 1")
    if not args.folder.is_dir():
        print(f"{args.folder}: no such folder (set --folder or PATHMLLM_DATA)", file=sys.stderr)
        return 2
    options = dict(args.option)
    try:
        seg = build_segmenter(args.backend, **options)
    except (KeyError, ValueError, TypeError) as exc:  # unknown name (lists the known), bad option
        print(f"cannot build backend {args.backend!r}: {exc}", file=sys.stderr)
        return 2
    rows, means = evaluate(seg, args.folder, args.names, args.downsample)

    print_machine()
    opts = " ".join(f"{k}={v!r}" for k, v in options.items())
    print(f"backend {args.backend} {opts}".rstrip() + f"; {len(rows)} images from {args.folder}"
          + (f", downsampled {args.downsample}x" if args.downsample > 1 else ""))
    headers = ["image", "µm/px", "AJI", "Dice", "F1", "PQ", "true", "pred", "s"]
    body = [[r["image"], f"{r['mpp']:.4f}", f"{r['aji']:.3f}", f"{r['dice']:.3f}", f"{r['f1']:.3f}",
             f"{r['pq']:.3f}", r["n_true"], r["n_pred"], f"{r['seconds']:.2f}"] for r in rows]
    body.append(["**mean**", "", f"{means['aji']:.3f}", f"{means['dice']:.3f}", f"{means['f1']:.3f}",
                 f"{means['pq']:.3f}", means["n_true"], means["n_pred"], f"{means['seconds']:.2f}"])
    print(table(headers, body))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"backend": args.backend, "options": options, "folder": str(args.folder),
                                         "downsample": args.downsample, "rows": rows, "means": means},
                                        indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
