"""Patch-export throughput: ``pathmllm.wsi.export.export_patches`` against a naive loop.

What is measured: wall time to write the same patches as PNG files into a folder, by

* ``naive``: one process, ``openslide.OpenSlide(path).read_region(xy, level, (s, s))``
  ``.convert("RGB")``, a PIL bicubic resize where the plan resizes (so the files hold the
  same pixels), ``Image.save(..., "PNG", compress_level=1)`` as the exporter does;
* ``pathmllm workers=2`` and ``workers=1``: ``export_patches(store, slide, fmt="png",
  container="folder", workers=N, limit=L)``, the whole call (slide opening, worker start,
  writing files atomically) timed.

on two slides: the example ``CMU-1-Small-Region.svs`` (2220 x 2967 px at 0.499 µm/px, tiled
with ``min_tissue=0``: 64 patches read 1:1 at level 0) and a synthetic 40000 x 40000 px
pyramid at 0.25 µm/px (``synthetic_slide.py``; the first ``--limit`` patches of its store,
each 512 px read at level 0 and resized to 256 px).

The methods run in rounds, in rotating order, so that other load on the machine hits them
alike; the table gives per-round times, the median, patches/s from the median, and the
speed relative to ``naive`` as the median of the per-round ratios. The first pathmllm call
of a run starts the worker server (cold); later rounds reuse it, as a batch export does.
Exported files are checked to hold the naive loop's pixels and ``Slide.read_patch``'s.

Run::

    .venv/bin/python benchmarks/bench_export.py            # full: 2000 patches, 3 rounds (~5 min)
    .venv/bin/python benchmarks/bench_export.py --quick    # 300 patches, 2 rounds (~1 min)
    .venv/bin/python benchmarks/bench_export.py --wait-idle 20   # wait for a quiet machine first
    # compare with another version of export.py (e.g. before a change):
    git show HEAD:src/pathmllm/wsi/export.py > benchmarks/_work/export_head.py
    .venv/bin/python benchmarks/bench_export.py --also benchmarks/_work/export_head.py

Target (issue): pathmllm workers=2 at least 1.5x the naive loop on a 2-core machine.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import openslide
from _common import EXAMPLE_SLIDE, WORK, load, median, print_machine, table, wait_for_idle
from PIL import Image
from synthetic_slide import synthetic_slide

from pathmllm.wsi import export as pm_export
from pathmllm.wsi import open_slide
from pathmllm.wsi.pipeline import tile_slide
from pathmllm.wsi.store import SlideStore
from pathmllm.wsi.tiling import TilingConfig

OUT = WORK / "bench_export"
TARGET = 1.5


def naive_export(slide_path: Path, coords: np.ndarray, level: int, read_size: int, patch_size: int,
                 name: str, folder: Path) -> int:
    """The reference: one process, one ``read_region`` per patch, PNG as the exporter writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    slide = openslide.OpenSlide(str(slide_path))
    for x, y in coords:
        img = slide.read_region((int(x), int(y)), level, (read_size, read_size)).convert("RGB")
        if read_size != patch_size:
            img = img.resize((patch_size, patch_size), Image.Resampling.BICUBIC)
        img.save(folder / f"{name}_x{int(x)}_y{int(y)}.png", format="PNG", compress_level=1)
    slide.close()
    return len(coords)


@dataclass
class Method:
    label: str
    run: Callable[[], int]
    seconds: list[float] = field(default_factory=list)


@dataclass
class Case:
    label: str
    slide: Path
    store: SlideStore
    coords: np.ndarray
    level: int
    read_size: int
    patch_size: int


def prepare(slide: Path, limit: int | None) -> Case:
    """Tile ``slide`` with min_tissue=0 (resumable, so done once) and pick its first ``limit`` patches."""
    result = tile_slide(slide, OUT / "stores", config=TilingConfig(min_tissue=0.0))
    store = SlideStore.open(result.store)
    coords, attrs = store.coords()
    coords = coords[:limit]
    return Case(slide.name, slide, store, coords, int(attrs["read_level"]), int(attrs["read_size"]),
                int(attrs["patch_size"]))


def pathmllm_run(case: Case, workers: int, module: ModuleType = pm_export) -> Callable[[], int]:
    def run() -> int:
        shutil.rmtree(case.store.path("patches"), ignore_errors=True)  # no resume: all patches again
        res = module.export_patches(case.store, case.slide, fmt="png", container="folder", workers=workers,
                                    limit=len(case.coords))
        if res.n_written != len(case.coords):
            raise RuntimeError(f"{case.label}: exported {res.n_written} patches, expected {len(case.coords)}")
        return int(res.n_written)

    return run


def naive_folder(case: Case) -> Path:
    return OUT / "naive" / case.store.slide_name


def naive_run(case: Case) -> Callable[[], int]:
    def run() -> int:
        folder = naive_folder(case)
        shutil.rmtree(folder, ignore_errors=True)
        return naive_export(case.slide, case.coords, case.level, case.read_size, case.patch_size,
                            case.store.slide_name, folder)

    return run


def check_pixels(case: Case, sample: int = 40) -> None:
    """Files of the last pathmllm run equal ``Slide.read_patch`` and, for patches inside the
    slide, the naive loop's (``convert("RGB")`` turns OpenSlide's transparent padding beyond
    the edge black, where pathmllm pads white)."""
    rng = np.random.default_rng(0)
    idx = rng.choice(len(case.coords), size=min(sample, len(case.coords)), replace=False)
    _, attrs = case.store.coords()
    with open_slide(case.slide) as s:
        plan = s.plan(float(attrs["target_mpp"]), int(attrs["patch_size"]))
        w0, h0 = s.dimensions
        for i in idx:
            x, y = (int(v) for v in case.coords[i])
            fname = pm_export.patch_name(case.store.slide_name, x, y, "png")
            got = np.asarray(Image.open(case.store.path("patches") / fname))
            if not np.array_equal(got, s.read_patch((x, y), plan.patch_size, plan=plan)):
                raise SystemExit(f"{case.label}: {fname} differs from Slide.read_patch")
            inside = x + plan.patch_size_level0 <= w0 and y + plan.patch_size_level0 <= h0
            if inside and not np.array_equal(got, np.asarray(Image.open(naive_folder(case) / fname))):
                raise SystemExit(f"{case.label}: {fname} differs from the naive loop's")


def bench(case: Case, rounds: int, also: list[ModuleType]) -> list[Method]:
    methods = [
        Method("naive (1 process)", naive_run(case)),
        Method("pathmllm workers=2", pathmllm_run(case, 2)),
        Method("pathmllm workers=1", pathmllm_run(case, 1)),
    ]
    methods += [Method(f"{m.__name__}.py workers=2", pathmllm_run(case, 2, m)) for m in also]
    for r in range(rounds):
        order = methods[r % len(methods):] + methods[: r % len(methods)]  # rotate who goes first
        for m in order:
            t0 = time.perf_counter()
            n = m.run()
            m.seconds.append(time.perf_counter() - t0)
            assert n == len(case.coords)
            if m.label == "pathmllm workers=2" and r == 0:
                check_pixels(case)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{m.label} {m.seconds[-1]:.2f} s" for m in methods)
              + f" (load average {load()})", flush=True)
    return methods


def report(case: Case, methods: list[Method]) -> tuple[list[list[object]], float]:
    naive = methods[0]
    rows: list[list[object]] = []
    ratio_w2 = float("nan")
    for m in methods:
        ratios = [n / s for n, s in zip(naive.seconds, m.seconds)]
        ratio = median(ratios)
        if m.label == "pathmllm workers=2":
            ratio_w2 = ratio
        rows.append([
            case.label, len(case.coords), m.label, " ".join(f"{s:.2f}" for s in m.seconds),
            f"{median(m.seconds):.2f}", f"{len(case.coords) / median(m.seconds):.1f}", f"{ratio:.2f}x",
        ])
    return rows, ratio_w2


def load_module(path: Path) -> ModuleType:
    """Import another export.py by file name (its folder goes on sys.path, so workers find it too)."""
    sys.path.insert(0, str(path.resolve().parent))
    return importlib.import_module(path.stem)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="300 synthetic patches, 2 rounds")
    ap.add_argument("--rounds", type=int,
                    help="rounds on the synthetic slide (default 3, --quick 2); the example slide, "
                         "under a second a run, gets 3 times as many")
    ap.add_argument("--limit", type=int, help="patches of the synthetic slide (default 2000, --quick 300)")
    ap.add_argument("--size", type=int, default=40000, help="side of the synthetic slide, px")
    ap.add_argument("--wait-idle", type=float, metavar="MINUTES", default=0,
                    help="first wait (up to MINUTES) until under 10%% of the cores are busy")
    ap.add_argument("--also", type=Path, action="append", default=[],
                    help="another export.py to time with workers=2 (e.g. the previous version)")
    args = ap.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 3)
    limit = args.limit or (300 if args.quick else 2000)
    also = [load_module(p) for p in args.also]
    synthetic = synthetic_slide(args.size)
    cases = [prepare(EXAMPLE_SLIDE, None), prepare(synthetic, limit)]
    if args.wait_idle:
        wait_for_idle(0.1, 60 * args.wait_idle)
    print_machine()
    rows: list[list[object]] = []
    summary = []
    for case, n_rounds in zip(cases, (3 * rounds, rounds)):
        print(f"{case.label}: {len(case.coords)} patches, read {case.read_size} px at level {case.level}"
              f"{'' if case.read_size == case.patch_size else f', resized to {case.patch_size} px'}; "
              f"{n_rounds} rounds", flush=True)
        methods = bench(case, n_rounds, also)
        case_rows, ratio = report(case, methods)
        rows += case_rows
        summary.append((case.label, ratio))
    print()
    print(table(["slide", "patches", "method", "seconds per round", "median s", "patches/s", "vs naive"], rows))
    print()
    met = all(r >= TARGET for _, r in summary)
    print("ratio pathmllm(workers=2)/naive: " + ", ".join(f"{label} {r:.2f}x" for label, r in summary)
          + f" (target >= {TARGET}: {'met' if met else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
