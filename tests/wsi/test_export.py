"""Patch export: the files hold exactly the pixels read_patch gives, in every container."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathmllm.wsi import open_slide
from pathmllm.wsi.export import export_patches, patch_name
from pathmllm.wsi.pipeline import tile_slide
from pathmllm.wsi.store import SlideStore
from pathmllm.wsi.tiling import TilingConfig

CFG = TilingConfig(min_tissue=0.05, patch_size=128)  # about 20 patches on the test pyramid


def _expected(slide_path: Path, store: SlideStore) -> dict[str, np.ndarray]:
    coords, attrs = store.coords()
    with open_slide(slide_path) as s:
        plan = s.plan(attrs["target_mpp"], attrs["patch_size"])
        return {patch_name(store.slide_name, x, y, "png"): s.read_patch((x, y), attrs["patch_size"], plan=plan)
                for x, y in coords}


@pytest.mark.parametrize("workers,engine", [(1, "this process"), (2, "threads"), (2, "processes")])
def test_folder_export_matches_read_patch(pyramid: Path, tmp_path: Path, workers: int, engine: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from pathmllm.wsi import export

    if engine == "processes":  # what a large job on a Python-heavy backend uses
        monkeypatch.setattr(export, "THREADS_UP_TO", 0)
        monkeypatch.setattr(export, "GIL_FREE_BACKENDS", ())
    r = tile_slide(pyramid, tmp_path, config=CFG)
    store = SlideStore.open(r.store)
    res = export_patches(store, pyramid, fmt="png", container="folder", workers=workers)
    assert res.n_patches == r.n_patches == res.n_written
    want = _expected(pyramid, store)
    files = sorted((Path(r.store) / "patches").iterdir())
    assert len(files) == len(want)
    for f in files:
        np.testing.assert_array_equal(np.asarray(Image.open(f)), want[f.name])


def test_rows_read_in_one_call_equal_single_reads(example_slide: Path, tmp_path: Path) -> None:
    r = tile_slide(example_slide, tmp_path, config=TilingConfig(min_tissue=0.0))
    store = SlideStore.open(r.store)
    export_patches(store, example_slide, workers=1)
    want = _expected(example_slide, store)
    for name, arr in want.items():
        np.testing.assert_array_equal(np.asarray(Image.open(Path(r.store) / "patches" / name)), arr)


@pytest.mark.parametrize("container", ["tar", "zip"])
def test_archives(pyramid: Path, tmp_path: Path, container: str) -> None:
    r = tile_slide(pyramid, tmp_path, config=CFG)
    store = SlideStore.open(r.store)
    res = export_patches(store, pyramid, fmt="png", container=container, workers=2)
    want = _expected(pyramid, store)
    target = Path(res.output)
    assert target.name == f"patches.{container}"
    if container == "tar":
        with tarfile.open(target) as tf:
            got = {m.name: np.asarray(Image.open(io.BytesIO(tf.extractfile(m).read()))) for m in tf.getmembers()}
    else:
        with zipfile.ZipFile(target) as zf:
            got = {n: np.asarray(Image.open(io.BytesIO(zf.read(n)))) for n in zf.namelist()}
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_jpeg_and_resume(pyramid: Path, tmp_path: Path) -> None:
    r = tile_slide(pyramid, tmp_path, config=CFG)
    store = SlideStore.open(r.store)
    first = export_patches(store, pyramid, fmt="jpeg", workers=1, limit=3)
    assert first.n_written == 3
    files = list((Path(r.store) / "patches").glob("*.jpg"))
    files[0].unlink()  # as if the run was killed before it was written
    full = export_patches(store, pyramid, fmt="jpeg", workers=1)
    assert full.n_written == r.n_patches - 2  # only the missing ones are written
    again = export_patches(store, pyramid, fmt="jpeg", workers=1)
    assert again.status == "skipped"
    img = Image.open(next((Path(r.store) / "patches").glob("*.jpg")))
    assert img.format == "JPEG" and img.size == (128, 128)


def test_bad_format_is_refused(pyramid: Path, tmp_path: Path) -> None:
    r = tile_slide(pyramid, tmp_path, config=CFG)
    with pytest.raises(ValueError, match="png or jpeg"):
        export_patches(SlideStore.open(r.store), pyramid, fmt="gif")  # type: ignore[arg-type]
