"""Write a synthetic pyramidal whole-slide TIFF that OpenSlide opens as ``generic-tiff``.

The image is white with a few large, irregular blobs of tissue. The tissue texture is a
mosaic of real H&E tiles (NCT-CRC-HE and LC25000, from ``<data>/tiles``), so tissue
detection finds it and patches look like H&E. Level 0 is at ``mpp`` µm/px (0.25 by
default, written in the TIFF resolution tags in pixels per centimetre, so OpenSlide
reports ``openslide.mpp-x``); reduced levels at downsamples 4, 16, 64, ... follow as
further pages (NewSubfileType = reduced image) until a level would be smaller than a tile.

It is fast at any size: the texture is a periodic mosaic cut into a few dozen distinct
tiles per level, JPEG-encoded once, and the writer streams the already-compressed bytes
through ``tifffile.TiffWriter.write`` (an iterator of bytes with ``shape``, ``dtype``,
``tile`` and ``compression`` given). Only tiles on a blob's edge, where tissue meets
background, are encoded one by one. 80000 x 80000 px takes well under a minute.

Run::

    .venv/bin/python benchmarks/synthetic_slide.py 40000   # -> benchmarks/_work/synthetic_40000x40000_t256.tiff
    .venv/bin/python benchmarks/synthetic_slide.py 80000 80000 --out /tmp/big.tiff --tile 512

or import :func:`write_synthetic_slide` / :func:`synthetic_slide` (cached by size).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from _common import DATA, WORK
from PIL import Image

MOSAIC = 2048  # side of the periodic tissue texture, level-0 px
JPEG_QUALITY = 80


@dataclass(frozen=True)
class SyntheticSlide:
    """What :func:`write_synthetic_slide` wrote."""

    path: Path
    width: int
    height: int
    tile: int
    mpp: float
    level_downsamples: tuple[int, ...]
    level_dimensions: tuple[tuple[int, int], ...]
    tissue_fraction: float  # of level-0 tiles holding any tissue
    n_tiles: int  # tiles written, all levels
    n_encoded: int  # tiles JPEG-encoded (distinct texture tiles + blob edges)
    seconds: float
    bytes: int


def he_tiles(data: Path = DATA) -> list[np.ndarray]:
    """The real 224 px H&E tiles: NCT-CRC-HE classes other than background and fat, and LC25000."""
    root = data / "tiles"
    paths = [p for p in sorted((root / "nct-crc-9").glob("*.tif")) if not p.name.startswith(("BACK", "ADI"))]
    paths += sorted((root / "lc25000-lung").glob("*/*.jp*g"))
    if not paths:
        raise FileNotFoundError(f"no H&E tiles under {root}; set PATHMLLM_DATA to the data folder")
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def tissue_mosaic(tiles: list[np.ndarray], size: int = MOSAIC, seed: int = 0) -> np.ndarray:
    """A ``size`` x ``size`` RGB texture of randomly chosen, rotated and flipped H&E tiles."""
    rng = np.random.default_rng(seed)
    t = tiles[0].shape[0]
    n = math.ceil(size / t)
    rows = []
    for _ in range(n):
        row = []
        for _ in range(n):
            tile = tiles[int(rng.integers(len(tiles)))]
            tile = np.rot90(tile, int(rng.integers(4)))
            row.append(tile[:, ::-1] if rng.integers(2) else tile)
        rows.append(np.concatenate(row, axis=1))
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:size, :size])


@dataclass(frozen=True)
class Blobs:
    """Irregular ellipses in level-0 px: ``inside(x, y)`` is True on tissue."""

    cx: np.ndarray
    cy: np.ndarray
    rx: np.ndarray
    ry: np.ndarray
    angle: np.ndarray
    phase: np.ndarray

    @classmethod
    def random(cls, width: int, height: int, n: int = 5, seed: int = 0) -> Blobs:
        rng = np.random.default_rng(seed)
        side = min(width, height)
        # one blob per cell of a 3 x 3 grid (cells drawn without replacement), jittered
        cells = rng.choice(9, size=min(n, 9), replace=False)
        n = len(cells)
        return cls(
            cx=((cells % 3) + 0.5 + rng.uniform(-0.15, 0.15, n)) / 3 * width,
            cy=((cells // 3) + 0.5 + rng.uniform(-0.15, 0.15, n)) / 3 * height,
            rx=rng.uniform(0.12, 0.19, n) * side,
            ry=rng.uniform(0.09, 0.14, n) * side,
            angle=rng.uniform(0, np.pi, n),
            phase=rng.uniform(0, 2 * np.pi, (n, 2)).T,
        )

    def inside(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Tissue on the grid of ascending level-0 ``xs`` (columns) and ``ys`` (rows): bool (rows, cols).

        Each blob is evaluated only inside its bounding square, so the cost follows the
        blob area that the grid covers, not the grid size times the number of blobs.
        """
        out = np.zeros((len(ys), len(xs)), dtype=bool)
        for i in range(len(self.cx)):
            reach = max(self.rx[i], self.ry[i]) * (1 + 0.12 + 0.07)  # the largest edge factor
            c0, c1 = np.searchsorted(xs, [self.cx[i] - reach, self.cx[i] + reach])
            r0, r1 = np.searchsorted(ys, [self.cy[i] - reach, self.cy[i] + reach])
            if c1 <= c0 or r1 <= r0:
                continue
            dx = (xs[c0:c1] - self.cx[i])[None, :]
            dy = (ys[r0:r1] - self.cy[i])[:, None]
            c, s = math.cos(self.angle[i]), math.sin(self.angle[i])
            u, v = (dx * c + dy * s) / self.rx[i], (-dx * s + dy * c) / self.ry[i]
            theta = np.arctan2(v, u)
            edge = 1 + 0.12 * np.sin(3 * theta + self.phase[0][i]) + 0.07 * np.sin(7 * theta + self.phase[1][i])
            out[r0:r1, c0:c1] |= u * u + v * v < edge * edge
        return out


def encode_jpeg(tile: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Encode one RGB tile as tifffile does for ``photometric='rgb', compression='jpeg'``
    (YCbCr, 2x2 chroma subsampling), so the bytes match the tags it writes."""
    return bytes(
        imagecodecs.jpeg_encode(tile, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2))
    )


def _level_texture(mosaic: np.ndarray, downsample: int, tile: int) -> np.ndarray:
    """The mosaic at one level, repeated to at least one tile (its period stays a whole
    number of pixels, so neighbouring tiles join seamlessly)."""
    side = max(1, mosaic.shape[0] // downsample)
    tex = np.asarray(Image.fromarray(mosaic).resize((side, side), Image.Resampling.BOX)) if downsample > 1 else mosaic
    reps = math.ceil(tile / side)
    return np.tile(tex, (reps, reps, 1)) if reps > 1 else tex


def _level_tiles(
    blobs: Blobs, texture: np.ndarray, downsample: int, dims: tuple[int, int], tile: int, quality: int
) -> tuple[Iterator[bytes], dict[str, int]]:
    """Compressed tiles of one level, row-major, and counts of what was encoded."""
    w, h = dims
    ntx, nty = math.ceil(w / tile), math.ceil(h / tile)
    period = texture.shape[0] // tile  # distinct texture tiles per side
    distinct = [
        [encode_jpeg(np.ascontiguousarray(texture[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]), quality)
         for c in range(period)]
        for r in range(period)
    ]
    white = encode_jpeg(np.full((tile, tile, 3), 255, np.uint8), quality)
    # classify tiles on an 8 x 8 sample grid per tile (+ edges): all tissue, none, or mixed
    sub = 8
    step = tile / sub
    xs = (np.arange(ntx * sub + 1) * step) * downsample
    ys = (np.arange(nty * sub + 1) * step) * downsample
    samples = blobs.inside(xs, ys)
    counts = {"encoded": period * period + 1, "tissue": 0}

    def tiles() -> Iterator[bytes]:
        for r in range(nty):
            block_rows = samples[r * sub : (r + 1) * sub + 1]
            for c in range(ntx):
                block = block_rows[:, c * sub : (c + 1) * sub + 1]
                if not block.any():
                    yield white
                    continue
                counts["tissue"] += 1
                tex = distinct[r % period][c % period]
                if block.all():
                    yield tex
                    continue
                # an edge tile: tissue where the blob is, white elsewhere
                px = (c * tile + np.arange(tile) + 0.5) * downsample
                py = (r * tile + np.arange(tile) + 0.5) * downsample
                mask = blobs.inside(px, py)
                t0 = texture[(r % period) * tile : (r % period + 1) * tile, (c % period) * tile : (c % period + 1) * tile]
                counts["encoded"] += 1
                yield encode_jpeg(np.where(mask[..., None], t0, np.uint8(255)), quality)

    return tiles(), counts


def pyramid_downsamples(width: int, height: int, tile: int) -> list[int]:
    """1, 4, 16, ... while the level is at least one tile on its longer side."""
    out = [1]
    while max(width, height) / (out[-1] * 4) >= tile:
        out.append(out[-1] * 4)
    return out


def write_synthetic_slide(
    path: str | os.PathLike[str],
    width: int,
    height: int | None = None,
    tile: int = 256,
    mpp: float = 0.25,
    quality: int = JPEG_QUALITY,
    n_blobs: int = 5,
    seed: int = 0,
    data: Path = DATA,
) -> SyntheticSlide:
    """Write the pyramid to ``path`` (atomically) and describe it."""
    t0 = time.perf_counter()
    height = height or width
    if tile % 16:
        raise ValueError(f"tile must be a multiple of 16 (JPEG 2x2 subsampling), got {tile}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mosaic = tissue_mosaic(he_tiles(data), MOSAIC, seed)
    blobs = Blobs.random(width, height, n_blobs, seed)
    downsamples = pyramid_downsamples(width, height, tile)
    dims, n_tiles, n_encoded, tissue_tiles = [], 0, 0, 0
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            for i, ds in enumerate(downsamples):
                w, h = math.ceil(width / ds), math.ceil(height / ds)
                texture = _level_texture(mosaic, ds, tile)
                tiles, counts = _level_tiles(blobs, texture, ds, (w, h), tile, quality)
                res = 1e4 / (mpp * ds)  # px per cm
                tw.write(
                    tiles,
                    shape=(h, w, 3),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    photometric="rgb",
                    compression="jpeg",
                    subfiletype=0 if i == 0 else 1,
                    resolution=(res, res),
                    resolutionunit="CENTIMETER",
                    description=f"pathmllm synthetic slide {width}x{height} level {i}",
                    metadata=None,
                )
                dims.append((w, h))
                n_tiles += math.ceil(w / tile) * math.ceil(h / tile)
                n_encoded += counts["encoded"]
                if i == 0:
                    tissue_tiles = counts["tissue"]
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    n0 = math.ceil(width / tile) * math.ceil(height / tile)
    return SyntheticSlide(
        path=path,
        width=width,
        height=height,
        tile=tile,
        mpp=mpp,
        level_downsamples=tuple(downsamples),
        level_dimensions=tuple(dims),
        tissue_fraction=tissue_tiles / n0,
        n_tiles=n_tiles,
        n_encoded=n_encoded,
        seconds=time.perf_counter() - t0,
        bytes=path.stat().st_size,
    )


def synthetic_slide(width: int, height: int | None = None, tile: int = 256, folder: Path = WORK) -> Path:
    """``<folder>/synthetic_<w>x<h>_t<tile>.tiff``, written on first use and reused after."""
    height = height or width
    path = folder / f"synthetic_{width}x{height}_t{tile}.tiff"
    if not path.exists():
        write_synthetic_slide(path, width, height, tile=tile)
    return path


def check_openslide(path: str | os.PathLike[str]) -> dict[str, object]:
    """What OpenSlide makes of the file (raises if it cannot open it)."""
    import openslide

    with openslide.OpenSlide(str(path)) as s:
        props = s.properties
        return {
            "vendor": props.get("openslide.vendor"),
            "level_count": s.level_count,
            "level_dimensions": s.level_dimensions,
            "level_downsamples": tuple(round(d, 3) for d in s.level_downsamples),
            "mpp": (props.get("openslide.mpp-x"), props.get("openslide.mpp-y")),
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("width", type=int)
    ap.add_argument("height", type=int, nargs="?")
    ap.add_argument("--out", type=Path, help="output file (default benchmarks/_work/synthetic_<w>x<h>_t<tile>.tiff)")
    ap.add_argument("--tile", type=int, default=256, help="tile side in px (256 or 512)")
    ap.add_argument("--mpp", type=float, default=0.25, help="µm/px of level 0")
    ap.add_argument("--quality", type=int, default=JPEG_QUALITY, help="JPEG quality")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    height = args.height or args.width
    out = args.out or WORK / f"synthetic_{args.width}x{height}_t{args.tile}.tiff"
    info = write_synthetic_slide(out, args.width, height, tile=args.tile, mpp=args.mpp, quality=args.quality,
                                 seed=args.seed)
    print(f"wrote {info.path}: {info.width}x{info.height} px, tile {info.tile}, {info.mpp} µm/px")
    print("  levels (downsample: size): "
          + ", ".join(f"{d}: {w}x{h}" for d, (w, h) in zip(info.level_downsamples, info.level_dimensions)))
    print(f"  {info.n_tiles} tiles written, {info.n_encoded} JPEG-encoded, "
          f"{100 * info.tissue_fraction:.1f}% of level-0 tiles hold tissue")
    print(f"  {info.bytes / 2**20:.1f} MiB in {info.seconds:.1f} s")
    print(f"  OpenSlide: {check_openslide(info.path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
