"""GeoJSON that QuPath, geopandas, LazySlide and TIAToolbox all import (FORMATS.md §1.4).

Rules kept here, once: a ``FeatureCollection``; UUID ids; ``properties.objectType`` always
set; ``classification`` always ``{name, color}``; measurements finite numbers only;
never ``properties.type``; never a GeometryCollection; closed rings; level-0 pixels with
two decimals.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from shapely.geometry import MultiPolygon, Polygon, mapping
from shapely.geometry.base import BaseGeometry
from shapely.validation import make_valid

from pathmllm.utils.atomic import write_json

ObjectType = Literal["annotation", "detection", "cell", "tile"]

_ALLOWED = ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon")


def polygonal(geom: BaseGeometry) -> Polygon | MultiPolygon | None:
    """Make ``geom`` valid and keep only its polygonal parts (no GeometryCollection)."""
    if geom.is_empty:
        return None
    if not geom.is_valid:
        geom = make_valid(geom)
    parts: list[Polygon] = []

    def collect(g: BaseGeometry) -> None:
        if isinstance(g, Polygon):
            if not g.is_empty and g.area > 0:
                parts.append(g)
        elif hasattr(g, "geoms"):
            for sub in g.geoms:
                collect(sub)

    collect(geom)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def geometry_json(geom: BaseGeometry) -> dict[str, Any]:
    """A GeoJSON geometry dict with coordinates rounded to 0.01 px (QuPath's grid)."""
    import shapely

    if geom.geom_type not in _ALLOWED:
        raise ValueError(f"{geom.geom_type} cannot be imported by QuPath v0.6+; explode it first")
    g = mapping(shapely.transform(geom, lambda xy: xy.round(2)))
    return {"type": g["type"], "coordinates": g["coordinates"]}


def _finite_measurements(measurements: Mapping[str, Any] | None) -> dict[str, float]:
    out = {}
    for k, v in (measurements or {}).items():
        if isinstance(v, bool) or v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[str(k)] = f
    return out


def feature(
    geometry: BaseGeometry,
    object_type: ObjectType = "annotation",
    classification: str | None = None,
    color: tuple[int, int, int] = (0, 160, 0),
    name: str | None = None,
    measurements: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    nucleus_geometry: BaseGeometry | None = None,
    extra_properties: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One QuPath-ready Feature. Non-finite measurements are dropped (v0.4 aborts on them)."""
    props: dict[str, Any] = {"objectType": object_type}
    if name is not None:
        props["name"] = str(name)
    if classification is not None:
        if not classification.strip() or ":" in classification or "\n" in classification:
            raise ValueError(f"class name {classification!r} must be non-blank, without ':' or newlines")
        props["classification"] = {"name": classification, "color": [int(c) for c in color]}
    m = _finite_measurements(measurements)
    if m:
        props["measurements"] = m
    if metadata:
        props["metadata"] = {str(k): str(v) for k, v in metadata.items() if v is not None}
    for k, v in (extra_properties or {}).items():
        if k == "type":
            raise ValueError("properties.type turns QuPath objects into annotations; use another key")
        props[k] = v
    feat: dict[str, Any] = {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": geometry_json(geometry),
    }
    if nucleus_geometry is not None:
        if object_type != "cell":
            raise ValueError("nucleus_geometry is only read by QuPath for objectType 'cell'")
        feat["nucleusGeometry"] = geometry_json(nucleus_geometry)
    feat["properties"] = props
    return feat


def feature_collection(features: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": list(features)}


def write_geojson(path: str | os.PathLike[str], features: Iterable[dict[str, Any]]) -> None:
    """Write a FeatureCollection atomically."""
    write_json(path, feature_collection(features))
