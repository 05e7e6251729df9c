"""Nuclei over a whole slide: segment every patch of the slide store, with context, resumably.

Writes into the slide's store (``<out>/<slide>/<setting>/``)::

    cells/part-00000.parquet ...   one file per chunk of patches (the resume points)
    cells.parquet                  one row per cell: level-0 centroid, features, patch and region,
                                   nucleus and cell outlines as WKB (level-0 px)
    cells_per_patch.parquet        per patch: count, density per mm², mean features
    cells.geojson                  QuPath cells (outline + nucleusGeometry), measurements
    cells_overlay.png              centroids on the thumbnail; cells_patch_overlay.png: the densest patch

Each patch is read with a margin of context so nuclei on its border are segmented whole;
a nucleus belongs to the patch that holds its centroid, so none is counted twice.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pathmllm.utils.atomic import atomic_path, write_json
from pathmllm.wsi.reader import Slide, resize
from pathmllm.wsi.resolution import ReadPlan
from pathmllm.wsi.store import SlideStore
from pathmllm.wsi.tiling import TilingConfig

log = logging.getLogger(__name__)


@dataclass
class CellConfig:
    """How cells are found on a slide."""

    backend: str = "watershed"
    """Registered nucleus segmenter (``pathmllm.cells.SEGMENTERS``)."""
    weights: str | None = None
    """Local checkpoint for backends that need weights."""
    margin_um: float = 12.0
    """Context read around each patch (µm) so nuclei cut by the patch border are whole."""
    cell_expansion_um: float = 5.0
    """Cell outline = nucleus grown by this much without overlapping neighbours (QuPath's default)."""
    chunk_patches: int = 32
    """Patches per resumable chunk."""
    backend_options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the backend's constructor."""

    def segmenter_kwargs(self) -> dict[str, Any]:
        kw = dict(self.backend_options)
        if self.weights is not None:
            kw["weights"] = self.weights
        return kw


@dataclass
class CellsResult:
    slide: str
    store: str
    status: str
    n_cells: int
    n_patches: int
    seconds: float
    megapixels: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- worker side
_STATE: dict[str, Any] = {}


def _init_worker(slide_path: str, reader_backend: str, mpp: float | None, config: dict[str, Any]) -> None:
    from pathmllm.cells.base import build_segmenter

    cfg = CellConfig(**config)
    _STATE["slide"] = Slide(slide_path, backend=reader_backend, mpp=mpp)
    _STATE["segmenter"] = build_segmenter(cfg.backend, **cfg.segmenter_kwargs())
    _STATE["config"] = cfg


def read_with_margin(slide: Slide, xy: tuple[int, int], plan: ReadPlan, margin: int) -> np.ndarray:
    """The patch at ``xy`` plus ``margin`` px (at the target µm/px) of context on each side."""
    ds = plan.downsample
    m0 = int(round(margin * ds))
    side = plan.patch_size + 2 * margin
    read = max(1, int(round(side * ds / plan.level_downsample)))
    arr = slide.read_region((int(xy[0]) - m0, int(xy[1]) - m0), plan.level, (read, read))
    return resize(arr, (side, side)) if read != side else arr


def _segment_chunk(job: dict[str, Any]) -> dict[str, Any]:
    """Segment the patches of one chunk and write its part file; returns counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely
    from shapely import affinity
    from skimage.segmentation import expand_labels

    from pathmllm.cells.annotations import label_polygons
    from pathmllm.cells.features import cell_features, centroids

    slide: Slide = _STATE["slide"]
    seg = _STATE["segmenter"]
    cfg: CellConfig = _STATE["config"]
    plan: ReadPlan = job["plan"]
    mpp_t = job["target_mpp"]
    margin = int(round(cfg.margin_um / mpp_t))
    grow = max(0, int(round(cfg.cell_expansion_um / mpp_t)))
    ps = plan.patch_size
    ds = plan.downsample
    columns: dict[str, list[Any]] = {}
    n_px = 0
    images = [read_with_margin(slide, tuple(xy), plan, margin) for xy in job["coords"]]
    labels_list = seg.segment_batch(images, mpp_t)
    for (xy, patch_idx, region_idx), rgb, labels in zip(
        zip(job["coords"], job["patch_index"], job["region_index"]), images, labels_list
    ):
        n_px += ps * ps
        if labels.max(initial=0) == 0:
            continue
        origin = (float(xy[0]) - margin * ds, float(xy[1]) - margin * ds)
        # a nucleus belongs to the patch that holds its centroid (pixel centres at +0.5)
        ids, rows, cols = centroids(labels)
        in_core = ((cols + 0.5 >= margin) & (cols + 0.5 < margin + ps)
                   & (rows + 0.5 >= margin) & (rows + 0.5 < margin + ps))
        keep_ids = ids[in_core]
        if len(keep_ids) == 0:
            continue
        nuc_polys = label_polygons(np.where(np.isin(labels, keep_ids), labels, 0))
        feats = cell_features(labels, rgb, mpp_t, origin=origin, scale=ds, keep=keep_ids, polygons=nuc_polys)
        core = np.ones(len(feats["label"]), dtype=bool)
        cells = expand_labels(labels, grow) if grow else labels
        cell_polys = label_polygons(np.where(np.isin(cells, keep_ids), cells, 0))
        for i in np.nonzero(core)[0]:
            lab = int(feats["label"][i])
            nuc = nuc_polys.get(lab)
            if nuc is None:
                continue
            cell = cell_polys.get(lab, nuc)
            to_l0 = {"xfact": ds, "yfact": ds, "origin": (0, 0)}
            nuc0 = affinity.translate(affinity.scale(nuc, **to_l0), *origin)
            cell0 = affinity.translate(affinity.scale(cell, **to_l0), *origin)
            for k in feats:
                if k != "label":
                    columns.setdefault(k, []).append(float(feats[k][i]))
            columns.setdefault("patch_index", []).append(int(patch_idx))
            columns.setdefault("region_index", []).append(int(region_idx))
            columns.setdefault("nucleus_wkb", []).append(shapely.to_wkb(nuc0))
            columns.setdefault("cell_wkb", []).append(shapely.to_wkb(cell0))
    table = pa.table(columns) if columns else _empty_table()
    with atomic_path(job["part"]) as tmp:
        pq.write_table(table, tmp)
    return {"n_cells": table.num_rows, "megapixels": n_px / 1e6}


def _empty_table() -> Any:
    import pyarrow as pa

    from pathmllm.cells.features import CELL_COLUMNS

    fields = [(c, pa.float64()) for c in CELL_COLUMNS if c != "label"]
    fields += [("patch_index", pa.int64()), ("region_index", pa.int64()),
               ("nucleus_wkb", pa.binary()), ("cell_wkb", pa.binary())]
    return pa.table({n: pa.array([], type=t) for n, t in fields})


# ---------------------------------------------------------------- driver
def segment_slide(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    tiling: TilingConfig | None = None,
    cells: CellConfig | None = None,
    backend: str = "auto",
    mpp: float | None = None,
    workers: int | None = 1,
    force: bool = False,
) -> CellsResult:
    """Find, measure and export the nuclei of one slide (tiling it first where needed)."""
    from pathmllm.wsi.pipeline import tile_slide

    t0 = time.perf_counter()
    cfg = cells or CellConfig()
    from pathmllm.cells.base import segmenter_class

    segmenter_class(cfg.backend)  # an unknown backend fails before any work is done
    tiled = tile_slide(path, out, tiling, backend=backend, mpp=mpp)
    store = SlideStore.open(tiled.store)
    parts_dir = store.path("cells")
    params = {"cells": asdict(cfg), "tiling": store.manifest().get("params", {}).get("tiling")}
    params_file = parts_dir / "params.json"
    if force or not params_file.exists() or json.loads(params_file.read_text()) != params:
        shutil.rmtree(parts_dir, ignore_errors=True)
        if store.stage_info("cells"):
            _forget_stage(store, "cells")
    if store.is_done("cells") and not force:
        info = store.stage_info("cells")
        return CellsResult(store.slide_name, str(store.root), "skipped", info["n_cells"], info["n_patches"],
                           time.perf_counter() - t0, info.get("megapixels", 0.0))
    parts_dir.mkdir(parents=True, exist_ok=True)
    write_json(params_file, params)

    coords, attrs = store.coords()
    info = store.patch_info()
    with Slide(path, backend=backend, mpp=mpp) as slide:
        plan = slide.plan(float(attrs["target_mpp"]), int(attrs["patch_size"]),
                          float(params["tiling"].get("mpp_tolerance", 0.02)))
        reader_backend = slide.backend
    n = cfg.chunk_patches
    jobs = []
    for c, start in enumerate(range(0, len(coords), n)):
        part = parts_dir / f"part-{c:05d}.parquet"
        if part.exists():
            continue
        jobs.append({
            "coords": coords[start : start + n], "patch_index": np.arange(start, min(start + n, len(coords))),
            "region_index": info["region_index"][start : start + n], "plan": plan,
            "target_mpp": float(attrs["target_mpp"]), "part": str(part),
        })
    from pathmllm.utils.pool import process_map

    n_workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    mp = 0.0
    for res in process_map(_segment_chunk, jobs, n_workers, _init_worker,
                           (str(path), reader_backend, mpp, asdict(cfg))):
        mp += res["megapixels"]
    n_cells = _finish(store, slide_path=str(path), n_patches=len(coords), attrs=attrs, info=info,
                      plan=plan, reader_backend=reader_backend, mpp=mpp)
    seconds = time.perf_counter() - t0
    store.mark_done("cells", seconds, ["cells.parquet", "cells_per_patch.parquet", "cells.geojson", "cells_overlay.png"],
                    n_cells=n_cells, n_patches=len(coords), megapixels=round(mp, 3), backend=cfg.backend)
    return CellsResult(store.slide_name, str(store.root), "done", n_cells, len(coords), seconds, mp)


def _forget_stage(store: SlideStore, stage: str) -> None:
    m = store.manifest()
    m.get("stages", {}).pop(stage, None)
    store._write_manifest(m)


def _finish(store: SlideStore, slide_path: str, n_patches: int, attrs: dict[str, Any], info: dict[str, np.ndarray],
            plan: ReadPlan, reader_backend: str, mpp: float | None) -> int:
    """Merge the chunk parts into the slide-level tables, GeoJSON and overlays."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pathmllm.cells.features import patch_summary

    parts = sorted(store.path("cells").glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in parts]) if parts else _empty_table()
    table = table.append_column("cell_id", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    with atomic_path(store.path("cells.parquet")) as tmp:
        pq.write_table(table, tmp)
    cols = {c: table.column(c).to_numpy() for c in table.column_names if not c.endswith("_wkb")}
    patch_mm2 = (float(attrs["patch_size"]) * float(attrs["effective_mpp"]) / 1000.0) ** 2
    summary = patch_summary(cols, cols["patch_index"].astype(np.int64), n_patches, patch_mm2,
                            info.get("tissue_fraction"))
    with atomic_path(store.path("cells_per_patch.parquet")) as tmp:
        pq.write_table(pa.table(summary), tmp)
    _write_cells_geojson(store.path("cells.geojson"), table)
    _write_overlays(store, table, summary, slide_path, attrs, plan, reader_backend, mpp)
    return table.num_rows


def _write_cells_geojson(path: Path, table: Any) -> None:
    """Stream QuPath cells (geometry = cell outline, nucleusGeometry = nucleus) to a FeatureCollection."""
    import shapely

    from pathmllm.io.geojson import feature

    measure = ("area_um2", "perimeter_um", "eccentricity", "solidity", "hematoxylin_od", "eosin_od")
    data = {c: table.column(c).to_pylist() for c in (*measure, "patch_index", "region_index", "cell_id",
                                                     "nucleus_wkb", "cell_wkb")}
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write('{"type": "FeatureCollection", "features": [\n')
        for i in range(table.num_rows):
            feat = feature(
                shapely.from_wkb(data["cell_wkb"][i]),
                object_type="cell",
                nucleus_geometry=shapely.from_wkb(data["nucleus_wkb"][i]),
                measurements={k: data[k][i] for k in measure},
                metadata={"cell_id": data["cell_id"][i], "patch_index": data["patch_index"][i],
                          "region_index": data["region_index"][i]},
            )
            f.write(("," if i else "") + json.dumps(feat, separators=(",", ":")) + "\n")
        f.write("]}\n")


def _write_overlays(store: SlideStore, table: Any, summary: dict[str, np.ndarray], slide_path: str,
                    attrs: dict[str, Any], plan: ReadPlan, reader_backend: str, mpp: float | None) -> None:
    import shapely
    from PIL import Image, ImageDraw

    thumb = Image.open(store.path(SlideStore.THUMBNAIL)).convert("RGB")
    f = thumb.width / float(attrs["level0_width"])
    draw = ImageDraw.Draw(thumb)
    xs, ys = table.column("x").to_numpy(), table.column("y").to_numpy()
    for x, y in zip(xs * f, ys * f):
        draw.point((x, y), fill=(0, 90, 255))
    with atomic_path(store.path("cells_overlay.png")) as tmp:
        thumb.save(tmp, format="PNG")
    if table.num_rows == 0:
        return
    coords, _ = store.coords()
    best = int(np.argmax(summary["n_cells"]))
    x0, y0 = (int(v) for v in coords[best])
    with Slide(slide_path, backend=reader_backend, mpp=mpp) as slide:
        patch = Image.fromarray(slide.read_patch((x0, y0), plan.patch_size, plan=plan))
    ds = plan.downsample
    draw = ImageDraw.Draw(patch)
    sel = np.nonzero(table.column("patch_index").to_numpy() == best)[0]
    for key, color in (("cell_wkb", (255, 200, 0)), ("nucleus_wkb", (0, 200, 0))):
        col = table.column(key)
        for i in sel:
            geom = shapely.from_wkb(col[int(i)].as_py())
            pts = [((px - x0) / ds, (py - y0) / ds) for px, py in geom.exterior.coords]
            draw.line(pts, fill=color, width=1)
    with atomic_path(store.path("cells_patch_overlay.png")) as tmp:
        patch.save(tmp, format="PNG")
