"""Nucleus datasets on disk: MoNuSeg-style folders of images with ImageScope XML annotations."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pathmllm.cells.annotations import read_imagescope_xml

IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")

#: MoNuSeg images are 1000 x 1000 crops of 40x TCGA scans; one training XML lacks MicronsPerPixel
MONUSEG_MPP = 0.25


@dataclass
class NucleusSample:
    name: str
    image: np.ndarray
    """``(H, W, 3)`` uint8 RGB."""
    labels: np.ndarray
    """``(H, W)`` int32 instance labels."""
    mpp: float


def load_monuseg_folder(
    folder: str | os.PathLike[str], default_mpp: float = MONUSEG_MPP, names: list[str] | None = None
) -> list[NucleusSample]:
    """Pairs ``<name>.<image ext>`` + ``<name>.xml`` in ``folder``, sorted by name.

    µm/px is the XML's ``MicronsPerPixel`` when present, else ``default_mpp`` (MoNuSeg: 0.25).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of MoNuSeg-style images and XML files")
    samples = []
    for xml in sorted(folder.glob("*.xml")):
        if names is not None and xml.stem not in names:
            continue
        img_path = next((xml.with_suffix(e) for e in IMAGE_EXTENSIONS if xml.with_suffix(e).exists()), None)
        if img_path is None:
            raise FileNotFoundError(f"{xml}: no image beside it (looked for {', '.join(IMAGE_EXTENSIONS)})")
        image = np.asarray(Image.open(img_path).convert("RGB"))
        ann = read_imagescope_xml(xml, image.shape[:2])
        samples.append(NucleusSample(xml.stem, image, ann.labels, ann.mpp or default_mpp))
    if not samples:
        raise FileNotFoundError(f"{folder}: no <name>.xml annotation files")
    return samples
