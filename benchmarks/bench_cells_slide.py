"""Cells on a whole slide: cells/s, megapixels/s and peak memory of ``pathmllm slide cells``.

On the example slide (CMU-1-Small-Region.svs, 0.5 µm/px, 256 px patches), default
``watershed`` backend:

* ``segmenter only``: the same patches (with their 12 µm context), already read into memory,
  through ``WatershedSegmenter.segment``: the ceiling;
* ``pathmllm -j 1`` / ``-j 2``: ``segment_slide`` end to end (reading with context, segmenting,
  features, outlines, GeoJSON, overlays), each in a fresh child process whose peak RSS is
  read from ``getrusage(RUSAGE_CHILDREN)``.

Reported: seconds, cells/s, tissue megapixels/s (at 0.5 µm/px), peak RSS, and the ratios
pipeline / segmenter-only.

Run::

    .venv/bin/python benchmarks/bench_cells_slide.py
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import EXAMPLE_SLIDE, WORK, print_machine, table  # noqa: E402

CHILD = """
import json, sys, time
from pathmllm.cells.slide import CellConfig, segment_slide
t = time.perf_counter()
r = segment_slide(sys.argv[1], sys.argv[2], workers=int(sys.argv[3]))
print(json.dumps({"seconds": time.perf_counter() - t, "n_cells": r.n_cells, "megapixels": r.megapixels}))
"""


def run_child(slide: Path, out: Path, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    res = subprocess.run([sys.executable, "-c", CHILD, str(slide), str(out), str(workers)],
                         capture_output=True, text=True, check=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    data = json.loads(res.stdout.strip().splitlines()[-1])
    data["peak_mb"] = max(peak, before) / 1024  # KiB on Linux; max over children so far
    return data


def segmenter_only(slide: Path, out: Path) -> dict:
    import numpy as np

    from pathmllm.cells.base import build_segmenter
    from pathmllm.cells.slide import read_with_margin
    from pathmllm.wsi import open_slide
    from pathmllm.wsi.pipeline import tile_slide
    from pathmllm.wsi.store import SlideStore

    store = SlideStore.open(tile_slide(slide, out).store)
    coords, attrs = store.coords()
    s = open_slide(slide)
    plan = s.plan(float(attrs["target_mpp"]), int(attrs["patch_size"]))
    margin = int(round(12.0 / float(attrs["target_mpp"])))
    images = [read_with_margin(s, tuple(c), plan, margin) for c in coords]
    seg = build_segmenter("watershed")
    t = time.perf_counter()
    n = 0
    for im in images:
        lab = seg.segment(im, float(attrs["target_mpp"]))
        core = lab[margin:-margin, margin:-margin]
        n += len(np.unique(core[core > 0]))
    return {"seconds": time.perf_counter() - t, "n_cells": n, "megapixels": len(coords) * plan.patch_size**2 / 1e6}


def main() -> None:
    slide = EXAMPLE_SLIDE
    base = WORK / "cells"
    rows = []
    ref = segmenter_only(slide, base / "ref")
    results = {"segmenter only (in memory)": ref}
    for w in (1, 2):
        results[f"pathmllm slide cells -j {w}"] = run_child(slide, base / f"j{w}", w)
    print_machine()
    for name, r in results.items():
        rows.append([name, f"{r['seconds']:.2f}", r["n_cells"], f"{r['n_cells'] / r['seconds']:.0f}",
                     f"{r['megapixels'] / r['seconds']:.2f}", f"{r.get('peak_mb', float('nan')):.0f}",
                     f"{ref['seconds'] / r['seconds']:.2f}"])
    print(table(["method", "seconds", "cells", "cells/s", "MP/s", "peak RSS (MB)", "speed vs segmenter only"], rows))


if __name__ == "__main__":
    main()
