"""Nucleus annotations in and out: ImageScope/MoNuSeg XML and GeoJSON to instance masks,
and instance masks to QuPath cells (FORMATS.md §1.4)."""

from __future__ import annotations

import json
import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class AnnotationError(ValueError):
    """An annotation file that cannot be used; the message says what is wrong with it."""


@dataclass
class Annotations:
    """An instance label image rasterised from polygons."""

    labels: np.ndarray
    """``(H, W)`` int32, 0 = background, 1..N = nuclei in file order."""
    mpp: float | None
    """µm/px declared by the file (ImageScope's ``MicronsPerPixel``), if any."""
    n_outside: int = 0
    """Polygons dropped because they lie entirely outside the image."""
    n_degenerate: int = 0
    """Polygons dropped because they have fewer than 3 vertices or no area."""


def _rasterise(polygons: list[np.ndarray], shape: tuple[int, int], source: str) -> Annotations:
    from skimage.draw import polygon as draw_polygon

    h, w = shape
    labels = np.zeros((h, w), dtype=np.int32)
    n_out = n_bad = 0
    label = 0
    for xy in polygons:
        if len(xy) < 3:
            n_bad += 1
            continue
        xs, ys = xy[:, 0], xy[:, 1]
        if xs.max() < 0 or ys.max() < 0 or xs.min() >= w or ys.min() >= h:
            n_out += 1
            continue
        # pixel centres inside the polygon (vertices are in pixel-edge coordinates)
        rr, cc = draw_polygon(ys - 0.5, xs - 0.5, shape=(h, w))
        if len(rr) == 0:
            n_bad += 1
            continue
        label += 1
        labels[rr, cc] = label  # a later nucleus wins where two overlap, as MoNuSeg's converters do
    total = len(polygons)
    if total and n_out > total / 2:
        raise AnnotationError(
            f"{source}: {n_out} of {total} polygons lie entirely outside the {w}x{h} image; "
            "was it made for another image, level or crop? Check the pairing and the offset"
        )
    if n_out:
        log.warning("%s: dropped %d of %d polygons that lie outside the %dx%d image", source, n_out, total, w, h)
    return Annotations(labels, None, n_out, n_bad)


def read_imagescope_xml(path: str | os.PathLike[str], shape: tuple[int, int]) -> Annotations:
    """Rasterise an Aperio ImageScope / MoNuSeg XML (one ``<Region>`` per nucleus) at ``shape`` (H, W)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise AnnotationError(f"{path}: not well-formed XML ({exc}); is the file complete?") from exc
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read it ({exc})") from exc
    if root.tag != "Annotations":
        raise AnnotationError(f"{path}: root element is <{root.tag}>, expected ImageScope's <Annotations>")
    polygons = []
    for region in root.iter("Region"):
        verts = region.findall("./Vertices/Vertex")
        try:
            xy = np.array([[float(v.attrib["X"]), float(v.attrib["Y"])] for v in verts], dtype=np.float64)
        except (KeyError, ValueError) as exc:
            raise AnnotationError(
                f"{path}: region {region.attrib.get('Id', '?')} has a vertex without numeric X/Y ({exc})"
            ) from exc
        polygons.append(xy.reshape(-1, 2))
    if not polygons:
        raise AnnotationError(f"{path}: no <Region> polygons found; is this an ImageScope annotation file?")
    ann = _rasterise(polygons, shape, str(path))
    mpp = root.attrib.get("MicronsPerPixel")
    ann.mpp = float(mpp) if mpp else None
    return ann


def read_geojson_instances(
    path: str | os.PathLike[str],
    shape: tuple[int, int],
    offset: tuple[float, float] = (0.0, 0.0),
    downsample: float = 1.0,
) -> Annotations:
    """Rasterise GeoJSON nuclei (Polygon/MultiPolygon features; ``nucleusGeometry`` preferred
    when present) into ``shape``; pixel = (coordinate - offset) / downsample."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: cannot read it as JSON ({exc})") from exc
    feats = data.get("features") if isinstance(data, dict) else data
    if isinstance(data, dict) and data.get("type") == "Feature":
        feats = [data]
    if not isinstance(feats, list):
        raise AnnotationError(f"{path}: expected a FeatureCollection or a list of Features")
    polygons = []
    ox, oy = offset
    for f in feats:
        if not isinstance(f, dict):
            continue
        geom = f.get("nucleusGeometry") or f.get("geometry")
        if not geom:
            continue
        rings = []
        if geom.get("type") == "Polygon":
            rings = [geom["coordinates"][0]]
        elif geom.get("type") == "MultiPolygon":
            rings = [poly[0] for poly in geom["coordinates"]]
        for ring in rings:
            xy = (np.asarray(ring, dtype=np.float64)[:, :2] - [ox, oy]) / downsample
            polygons.append(xy)
    if not polygons:
        raise AnnotationError(f"{path}: no Polygon or MultiPolygon features")
    return _rasterise(polygons, shape, str(path))


def label_polygons(labels: np.ndarray) -> dict[int, Any]:
    """Shapely polygons (label-pixel coordinates, pixel edges) for each label, keyed by label."""
    from shapely.geometry import Polygon
    from skimage import measure

    from pathmllm.io.geojson import polygonal

    out: dict[int, Any] = {}
    for region in measure.regionprops(labels):
        r0, c0, r1, c1 = region.bbox
        crop = np.pad(region.image, 1).astype(np.float32)
        contours = measure.find_contours(crop, 0.5)
        if not contours:
            continue
        c = max(contours, key=len)
        xy = np.stack([c[:, 1] - 1 + c0 + 0.5, c[:, 0] - 1 + r0 + 0.5], axis=1)
        if len(xy) < 4:
            continue
        poly = polygonal(Polygon(xy))
        if poly is None:
            continue
        if poly.geom_type == "MultiPolygon":
            poly = max(poly.geoms, key=lambda p: p.area)
        out[int(region.label)] = poly
    return out
