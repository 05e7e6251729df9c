"""Quick-look images: the thumbnail with tissue outlines, patches and regions drawn on it."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from shapely.geometry import Polygon

#: longest side of overlay images
OVERLAY_SIZE = 1600


def draw_overlay(
    thumbnail: np.ndarray,
    thumb_downsample: float,
    polygons: list[Polygon],
    coords: np.ndarray,
    footprint: int,
    regions: dict[str, np.ndarray] | None = None,
) -> Image.Image:
    """Tissue outlines (green), patches (blue) and regions (orange) over ``thumbnail``.

    ``thumb_downsample`` is level-0 px per thumbnail px; all geometry is level-0 px.
    """
    img = Image.fromarray(thumbnail).convert("RGB")
    scale = 1.0
    if max(img.size) > OVERLAY_SIZE:
        scale = OVERLAY_SIZE / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
    f = 1.0 / (thumb_downsample / scale)  # thumbnail px per level-0 px
    fill = ImageDraw.Draw(img, "RGBA")  # translucent patch squares, blended into img
    for x, y in coords:
        fill.rectangle([x * f, y * f, (x + footprint) * f, (y + footprint) * f], fill=(40, 90, 255, 60))
    draw = ImageDraw.Draw(img)
    if len(coords) and footprint * f >= 4:
        for x, y in coords:
            draw.rectangle([x * f, y * f, (x + footprint) * f, (y + footprint) * f], outline=(40, 90, 255))
    for poly in polygons:
        for ring in [poly.exterior, *poly.interiors]:
            pts = [(px * f, py * f) for px, py in ring.coords]
            if len(pts) > 1:
                draw.line(pts, fill=(0, 170, 0), width=2)
    if regions is not None:
        for x, y, w, h in zip(regions["x"], regions["y"], regions["width"], regions["height"]):
            draw.rectangle([x * f, y * f, (x + w) * f, (y + h) * f], outline=(255, 140, 0), width=2)
    return img


def mask_image(mask: np.ndarray) -> Image.Image:
    return Image.fromarray((mask.astype(np.uint8) * 255), mode="L")
