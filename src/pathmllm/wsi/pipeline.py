"""Tile one slide into its SlideStore: tissue, then patches and regions. Resumable."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathmllm.utils.atomic import atomic_path
from pathmllm.wsi.coords_h5 import (
    clam_attrs,
    clam_level,
    link_or_copy,
    trident_attrs,
    trident_dir_name,
    write_coords_h5,
)
from pathmllm.wsi.errors import NoTissueError
from pathmllm.wsi.reader import Slide, slide_name
from pathmllm.wsi.store import SlideStore, slide_fingerprint
from pathmllm.wsi.tiling import TilingConfig, check_fits, make_grid
from pathmllm.wsi.tissue import TissueConfig, TissueMask, detect_tissue, mask_to_polygons

log = logging.getLogger(__name__)

Layout = str  # "clam" | "trident"
LAYOUTS = ("clam", "trident")


@dataclass
class TileResult:
    """What :func:`tile_slide` did for one slide."""

    slide: str
    path: str
    store: str
    status: str  # "done" | "skipped" (already done with the same parameters)
    n_patches: int
    n_regions: int
    seconds: float
    stages_run: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _save_png(path: Path, image: Any) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def tile_slide(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: TilingConfig | None = None,
    tissue_config: TissueConfig | None = None,
    backend: str = "auto",
    mpp: float | None = None,
    layouts: tuple[Layout, ...] = (),
    force: bool = False,
) -> TileResult:
    """Detect tissue and lay the patch grid of one slide into ``<out>/<slide>/<setting>/``.

    Stages already done with the same slide and parameters are skipped; ``force`` redoes them.
    ``layouts`` also writes the coords where CLAM (``out/clam/patches/<slide>.h5``) and
    TRIDENT (``out/trident/<mag>x_<ps>px_<ov>px_overlap/patches/<slide>_patches.h5``) look.
    """
    t_start = time.perf_counter()
    cfg = config or TilingConfig()
    tcfg = tissue_config or TissueConfig()
    for layout in layouts:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    name = slide_name(path)
    store = SlideStore(out, name, cfg.setting_name)
    with Slide(path, backend=backend, mpp=mpp) as slide:
        level0_mpp = slide.mpp  # raises MissingMppError naming --mpp
        plan = slide.plan(cfg.target_mpp, cfg.patch_size, cfg.mpp_tolerance)
        check_fits(slide.dimensions, plan, cfg, slide.name)
        params = {
            "tiling": cfg.to_dict(),
            "tissue": {k: v for k, v in tcfg.__dict__.items()},
            "mpp_override": mpp,
            "backend_request": backend,
        }
        info = slide.info()
        if force:
            store.path(SlideStore.MANIFEST).unlink(missing_ok=True)
        store.begin(info, slide_fingerprint(path), params)
        stages_run: list[str] = []

        tissue: TissueMask | None = None
        if not store.is_done("tissue"):
            t0 = time.perf_counter()
            tissue = detect_tissue(slide, tcfg)
            thumb, thumb_ds = slide.thumbnail(max_size=1024)
            from PIL import Image

            from pathmllm.io.geojson import write_geojson
            from pathmllm.wsi.overlay import mask_image

            _save_png(store.path(SlideStore.THUMBNAIL), Image.fromarray(thumb))
            _save_png(store.path(SlideStore.TISSUE_MASK), mask_image(tissue.mask))
            write_geojson(store.path(SlideStore.TISSUE_GEOJSON), tissue.geojson_features(level0_mpp))
            store.mark_done(
                "tissue",
                time.perf_counter() - t0,
                [SlideStore.THUMBNAIL, SlideStore.TISSUE_MASK, SlideStore.TISSUE_GEOJSON],
                tissue_fraction=round(tissue.fraction, 5),
                tissue_area_mm2=round(tissue.area_um2(level0_mpp) / 1e6, 5),
                threshold=round(tissue.threshold, 5),
                pieces=len(tissue.polygons),
                mask_downsample=list(tissue.downsample),
            )
            stages_run.append("tissue")

        if not store.is_done("patches"):
            t0 = time.perf_counter()
            if tissue is None:
                tissue = _load_tissue(store)
            if tissue.is_empty:
                raise NoTissueError(
                    f"{slide.path}: no tissue found (saturation threshold "
                    f"{tissue.threshold:.3f}); look at {store.path(SlideStore.THUMBNAIL)}. For faint "
                    "or unusual stains lower the tissue thresholds (TissueConfig.min_saturation)",
                    str(slide.path),
                )
            grid = make_grid(slide.dimensions, plan, tissue, cfg, slide.name)
            attrs = trident_attrs(
                plan, level0_mpp, slide.dimensions, cfg.overlap, slide.name, str(store.root)
            )
            dual = clam_level(plan, slide.level_downsamples)
            if dual is not None:
                attrs.update(
                    clam_attrs(dual[0], dual[1], slide.level_dimensions, slide.level_downsamples, str(store.root))
                )
            attrs.update(
                {
                    "target_mpp": float(cfg.target_mpp),
                    "effective_mpp": float(plan.effective_mpp),
                    "level0_mpp": float(level0_mpp),
                    "read_level": np.int64(plan.level),
                    "read_size": np.int64(plan.read_size),
                    "min_tissue": float(cfg.min_tissue),
                    "region_size": np.int64(cfg.region_size),
                    "step_level0": np.int64(grid.step_level0),
                }
            )
            write_coords_h5(
                store.path(SlideStore.COORDS),
                grid.coords,
                attrs,
                patch_info={
                    "tissue_fraction": grid.tissue_fraction,
                    "grid_rc": grid.grid_rc,
                    "region_index": grid.region_index,
                    "region_rc": grid.region_rc,
                },
            )
            _write_regions(store.path(SlideStore.REGIONS), grid.regions)
            _write_overlay(store, grid, tissue)
            store.mark_done(
                "patches",
                time.perf_counter() - t0,
                [SlideStore.COORDS, SlideStore.REGIONS, SlideStore.OVERLAY],
                n_patches=len(grid),
                n_regions=grid.n_regions,
                read_level=plan.level,
                read_size=plan.read_size,
                patch_size_level0=plan.patch_size_level0,
                effective_mpp=round(plan.effective_mpp, 6),
                clam_compatible=dual is not None,
            )
            stages_run.append("patches")
        if layouts:
            export_layouts(store, Path(out), layouts, slide)
    pinfo = store.stage_info("patches")
    return TileResult(
        slide=name,
        path=str(path),
        store=str(store.root),
        status="done" if stages_run else "skipped",
        n_patches=int(pinfo.get("n_patches", 0)),
        n_regions=int(pinfo.get("n_regions", 0)),
        seconds=round(time.perf_counter() - t_start, 3),
        stages_run=stages_run,
    )


def _load_tissue(store: SlideStore) -> TissueMask:
    from PIL import Image

    mask = np.asarray(Image.open(store.path(SlideStore.TISSUE_MASK))) > 0
    info = store.stage_info("tissue")
    ds = tuple(info.get("mask_downsample", (1.0, 1.0)))
    return TissueMask(mask, (float(ds[0]), float(ds[1])), None, mask_to_polygons(mask, ds), info.get("threshold", 0.0))


def _write_regions(path: Path, regions: dict[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(pa.table(regions), tmp)


def _write_overlay(store: SlideStore, grid: Any, tissue: TissueMask) -> None:
    from PIL import Image

    from pathmllm.wsi.overlay import draw_overlay

    thumb = np.asarray(Image.open(store.path(SlideStore.THUMBNAIL)).convert("RGB"))
    manifest = store.manifest()
    w0 = manifest["slide"]["dimensions"][0]
    img = draw_overlay(
        thumb, w0 / thumb.shape[1], tissue.polygons, grid.coords, grid.plan.patch_size_level0, grid.regions
    )
    _save_png(store.path(SlideStore.OVERLAY), img)


def export_layouts(store: SlideStore, out: Path, layouts: tuple[Layout, ...], slide: Slide) -> list[Path]:
    """Place the coords where CLAM and TRIDENT look for them (hard links when possible)."""
    from pathmllm.wsi.coords_h5 import read_coords_h5

    coords_path = store.path(SlideStore.COORDS)
    coords, attrs = read_coords_h5(coords_path)
    written = []
    if "trident" in layouts:
        dst = out / "trident" / trident_dir_name(attrs) / "patches" / f"{store.slide_name}_patches.h5"
        link_or_copy(coords_path, dst)
        written.append(dst)
    if "clam" in layouts:
        dst = out / "clam" / "patches" / f"{store.slide_name}.h5"
        if "patch_level" in attrs:
            link_or_copy(coords_path, dst)
        else:
            # no level serves TRIDENT's patch_size: CLAM reads read_size px at the read level
            level, size = int(attrs["read_level"]), int(attrs["read_size"])
            cattrs = clam_attrs(level, size, slide.level_dimensions, slide.level_downsamples, str(dst.parent.parent))
            cattrs["name"] = store.slide_name
            write_coords_h5(dst, coords, cattrs)
        written.append(dst)
    return written


def tile_and_export(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: TilingConfig | None = None,
    backend: str = "auto",
    mpp: float | None = None,
    fmt: str = "png",
    container: str = "folder",
    workers: int | None = None,
    quality: int = 90,
) -> dict[str, Any]:
    """Tile ``path`` if its store is missing, then export its patches (see :mod:`export`)."""
    from pathmllm.wsi.export import export_patches

    tiled = tile_slide(path, out, config, backend=backend, mpp=mpp)
    store = SlideStore.open(tiled.store)
    result = export_patches(store, path, fmt=fmt, container=container, workers=workers,  # type: ignore[arg-type]
                            quality=quality, backend=backend, mpp=mpp)
    return {**result.to_dict(), "n_regions": tiled.n_regions, "store": tiled.store}
