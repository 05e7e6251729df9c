"""SlideStore: one self-describing, resumable output folder per slide and setting.

::

    <out>/<slide>/<setting>/            e.g. out/CMU-1-Small-Region/0.5mpp_256px/
        manifest.json                   parameters, versions, stages done, timings
        thumbnail.png  tissue_mask.png  tissue.geojson
        coords.h5                       CLAM/TRIDENT coords + patch_info/ (tissue, regions)
        regions.parquet                 one row per region of region_size x region_size patches
        tissue_overlay.png              tissue outline, patches and regions on the thumbnail

Every file is written atomically and a stage is marked done in the manifest only after
its files exist, so a run killed at any point resumes without redoing finished work.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from pathmllm.utils.atomic import clean_stale_temps, write_json

log = logging.getLogger(__name__)

STORE_FORMAT = "pathmllm.slidestore/1"


def slide_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Size and modification time: a changed slide invalidates its store."""
    p = Path(path)
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file())
        return {
            "size": sum(q.stat().st_size for q in files),
            "mtime_ns": max((q.stat().st_mtime_ns for q in files), default=0),
        }
    st = p.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("pathmllm", "numpy", "openslide-python", "openslide-bin", "tiffslide", "tifffile",
                 "wsidicom", "pydicom", "pillow", "h5py", "scikit-image", "shapely"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


class SlideStore:
    """The folder ``<out>/<slide_name>/<setting>/`` and its manifest."""

    MANIFEST = "manifest.json"
    COORDS = "coords.h5"
    REGIONS = "regions.parquet"
    TISSUE_GEOJSON = "tissue.geojson"
    TISSUE_MASK = "tissue_mask.png"
    THUMBNAIL = "thumbnail.png"
    OVERLAY = "tissue_overlay.png"

    def __init__(self, out: str | os.PathLike[str], slide_name: str, setting: str) -> None:
        self.out = Path(out)
        self.slide_name = slide_name
        self.setting = setting
        self.root = self.out / slide_name / setting

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> SlideStore:
        """Open an existing store folder (``<out>/<slide>/<setting>``)."""
        root = Path(root)
        if not (root / cls.MANIFEST).exists():
            raise FileNotFoundError(
                f"{root} is not a slide store (no {cls.MANIFEST}); run `pathmllm slide tile` first"
            )
        return cls(root.parent.parent, root.parent.name, root.name)

    def path(self, name: str) -> Path:
        return self.root / name

    # ------------------------------------------------------------------ manifest
    def manifest(self) -> dict[str, Any]:
        p = self.path(self.MANIFEST)
        if not p.exists():
            return {}
        try:
            return json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            # only a foreign hand-edit can do this: writes are atomic
            log.warning("%s is unreadable (%s); the slide will be processed again", p, exc)
            return {}

    def begin(self, slide_info: dict[str, Any], fingerprint: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        """Load the manifest for this run; drop stages whose slide or parameters changed."""
        self.root.mkdir(parents=True, exist_ok=True)
        removed = clean_stale_temps(self.root)
        if removed:
            log.info("%s: removed %d temporary files of an interrupted run", self.root, removed)
        m = self.manifest()
        stale = m.get("slide", {}).get("fingerprint") != fingerprint or m.get("params") != params
        if m and stale:
            log.info("%s: slide or parameters changed since the last run; redoing all stages", self.root)
        if not m or stale:
            m = {"format": STORE_FORMAT, "stages": {}}
        m.update(
            {
                "format": STORE_FORMAT,
                "slide": {**slide_info, "fingerprint": fingerprint},
                "setting": self.setting,
                "params": params,
                "versions": library_versions(),
            }
        )
        m.setdefault("created", _now())
        m.setdefault("stages", {})
        self._write_manifest(m)
        return m

    def is_done(self, stage: str) -> bool:
        info = self.manifest().get("stages", {}).get(stage)
        if not info or not info.get("done"):
            return False
        return all(self.path(f).exists() for f in info.get("outputs", []))

    def mark_done(self, stage: str, seconds: float, outputs: list[str], **extra: Any) -> None:
        m = self.manifest()
        m.setdefault("stages", {})[stage] = {
            "done": True,
            "finished": _now(),
            "seconds": round(seconds, 3),
            "outputs": outputs,
            **extra,
        }
        self._write_manifest(m)

    def stage_info(self, stage: str) -> dict[str, Any]:
        return dict(self.manifest().get("stages", {}).get(stage, {}))

    def _write_manifest(self, m: dict[str, Any]) -> None:
        m["updated"] = _now()
        write_json(self.path(self.MANIFEST), m)

    # ------------------------------------------------------------------ readers
    def coords(self) -> tuple[np.ndarray, dict[str, Any]]:
        from pathmllm.wsi.coords_h5 import read_coords_h5

        return read_coords_h5(self.path(self.COORDS))

    def patch_info(self) -> dict[str, np.ndarray]:
        from pathmllm.wsi.coords_h5 import read_patch_info

        return read_patch_info(self.path(self.COORDS))

    def regions(self) -> dict[str, np.ndarray]:
        import pyarrow.parquet as pq

        table = pq.read_table(self.path(self.REGIONS))
        return {name: table.column(name).to_numpy() for name in table.column_names}

    def __repr__(self) -> str:
        return f"SlideStore({str(self.root)!r})"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
