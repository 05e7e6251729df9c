"""ImageScope XML and GeoJSON to instance masks, and their bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pathmllm.cells.annotations import (
    AnnotationError,
    label_polygons,
    read_geojson_instances,
    read_imagescope_xml,
)
from tests.conftest import shared


def _xml(regions: list[list[tuple[float, float]]], mpp: str = "0.25") -> str:
    out = [f'<Annotations MicronsPerPixel="{mpp}"><Annotation Id="1"><Regions>']
    for i, verts in enumerate(regions):
        out.append(f'<Region Id="{i}"><Vertices>')
        out += [f'<Vertex X="{x}" Y="{y}"/>' for x, y in verts]
        out.append("</Vertices></Region>")
    out.append("</Regions></Annotation></Annotations>")
    return "".join(out)


def test_squares_rasterise_exactly(tmp_path: Path) -> None:
    p = tmp_path / "a.xml"
    p.write_text(_xml([[(2, 2), (6, 2), (6, 6), (2, 6)], [(10, 1), (13, 1), (13, 3), (10, 3)]]))
    ann = read_imagescope_xml(p, (16, 16))
    assert ann.mpp == 0.25
    assert (ann.labels == 1).sum() == 16 and ann.labels[2:6, 2:6].min() == 1
    assert (ann.labels == 2).sum() == 6
    polys = label_polygons(ann.labels)
    assert polys[1].area == pytest.approx(16, rel=0.15)
    assert polys[1].bounds == pytest.approx((2, 2, 6, 6), abs=0.6)


def test_malformed_xml(tmp_path: Path) -> None:
    p = tmp_path / "bad.xml"
    p.write_text(_xml([[(2, 2), (6, 2), (6, 6)]])[:-20])
    with pytest.raises(AnnotationError, match="not well-formed XML"):
        read_imagescope_xml(p, (10, 10))
    p.write_text("<Other/>")
    with pytest.raises(AnnotationError, match="expected ImageScope's <Annotations>"):
        read_imagescope_xml(p, (10, 10))
    p.write_text(_xml([[(2, "x"), (6, 2), (6, 6)]]))
    with pytest.raises(AnnotationError, match="without numeric X/Y"):
        read_imagescope_xml(p, (10, 10))


def test_polygons_outside_the_image(tmp_path: Path) -> None:
    inside = [(1, 1), (4, 1), (4, 4), (1, 4)]
    outside = [(50, 50), (60, 50), (60, 60)]
    p = tmp_path / "a.xml"
    p.write_text(_xml([inside, inside, outside]))
    ann = read_imagescope_xml(p, (10, 10))
    assert ann.n_outside == 1 and ann.labels.max() == 2
    p.write_text(_xml([inside, outside, outside]))
    with pytest.raises(AnnotationError, match="2 of 3 polygons lie entirely outside the 10x10 image"):
        read_imagescope_xml(p, (10, 10))
    partly = [(8, 8), (14, 8), (14, 14), (8, 14)]  # clipped, kept
    p.write_text(_xml([partly]))
    assert (read_imagescope_xml(p, (10, 10)).labels == 1).sum() == 4


def test_geojson_round_trip(tmp_path: Path) -> None:
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[102, 52], [106, 52], [106, 56], [102, 56], [102, 52]]]},
         "properties": {"objectType": "detection"}},
    ]}
    p = tmp_path / "n.geojson"
    p.write_text(json.dumps(fc))
    ann = read_geojson_instances(p, (10, 10), offset=(100, 50))
    assert (ann.labels == 1).sum() == 16 and ann.labels[2:6, 2:6].all()
    p.write_text("{broken")
    with pytest.raises(AnnotationError, match="cannot read it as JSON"):
        read_geojson_instances(p, (10, 10))


@pytest.mark.data
def test_monuseg_xml_matches_its_declared_areas() -> None:
    import xml.etree.ElementTree as ET

    from PIL import Image

    xml = shared("nuclei", "monuseg-train", "TCGA-21-5784-01Z-00-DX1.xml")
    img = np.asarray(Image.open(xml.with_suffix(".tif")))
    ann = read_imagescope_xml(xml, img.shape[:2])
    regions = list(ET.parse(xml).getroot().iter("Region"))
    assert ann.labels.max() == len(regions) == 398 and ann.mpp == pytest.approx(0.2527)
    declared = sum(float(r.attrib["Area"]) for r in regions)
    assert (ann.labels > 0).sum() == pytest.approx(declared, rel=0.03)
