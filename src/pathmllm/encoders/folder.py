"""Embed a folder of patch images (for users who tiled elsewhere)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pathmllm.encoders.extract import (
    autocast_dtype,
    cached_encoder,
    embed_batch,
    precision_label,
    prefetch_in_thread,
    resolve_device,
    safe_name,
)
from pathmllm.utils.atomic import atomic_path

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class ImageFiles(torch.utils.data.Dataset):
    """Item ``i``: ``(i, uint8 (S, S, 3))``, resized to the encoder's input size, or ``(i, None)`` if unreadable."""

    def __init__(self, files: list[Path], size: int) -> None:
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None]:
        try:
            with Image.open(self.files[i]) as img:
                rgb = img.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError):
            return i, None
        if rgb.size != (self.size, self.size):
            rgb = rgb.resize((self.size, self.size), Image.Resampling.BICUBIC)
        return i, torch.from_numpy(np.asarray(rgb).copy())


def _collate(items: list[tuple[int, torch.Tensor | None]]) -> tuple[list[int], torch.Tensor | None, list[int]]:
    good = [(i, x) for i, x in items if x is not None]
    bad = [i for i, x in items if x is None]
    if not good:
        return [], None, bad
    return [i for i, _ in good], torch.stack([x for _, x in good]), bad


def embed_folder(
    folder: str | os.PathLike[str],
    encoder: str,
    out: str | os.PathLike[str] | None = None,
    weights: str | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> dict[str, Any]:
    """Features of every image under ``folder`` into ``out`` (HDF5: ``features``, ``paths``).

    Unreadable images are skipped and listed (``skipped`` attribute), never fatal.
    ``precision`` as in :class:`~pathmllm.encoders.extract.ExtractConfig` (``auto``: AMP on a
    GPU, float32 on the CPU; ``int8``: dynamic int8 linear layers on the CPU).
    """
    import h5py

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    dev = resolve_device(device)
    dtype = autocast_dtype(dev, precision)  # type: ignore[arg-type]
    enc = cached_encoder(encoder, weights, dev, False, precision)
    if num_workers is not None:
        workers = num_workers
    else:  # as for slides: on the CPU a reader thread, so the cores stay with the model
        workers = 0 if dev.type == "cpu" else max(1, min(8, (os.cpu_count() or 2) - 1))
    loader = torch.utils.data.DataLoader(
        ImageFiles(files, enc.spec.input_size), batch_size=batch_size, num_workers=workers,
        collate_fn=_collate, pin_memory=dev.type == "cuda",
    )
    feats = np.zeros((len(files), enc.embed_dim), np.float32)
    ok = np.zeros(len(files), bool)
    for idx, images, _bad in prefetch_in_thread(loader, depth=2) if workers == 0 else loader:
        if images is not None:
            feats[idx] = embed_batch(enc, images, dev, dtype)
            ok[idx] = True
    skipped = [str(files[i].relative_to(folder)) for i in np.nonzero(~ok)[0]]
    for s in skipped:
        log.warning("%s: unreadable image, skipped", folder / s)
    target = Path(out) if out else folder / f"embeddings_{safe_name(encoder)}.h5"
    rel = [str(files[i].relative_to(folder)) for i in np.nonzero(ok)[0]]
    with atomic_path(target) as tmp, h5py.File(tmp, "w") as f:
        d = f.create_dataset("features", data=feats[ok])
        d.attrs.update({"encoder": encoder, "folder": str(folder), "precision": precision_label(precision, dtype)})
        f.create_dataset("paths", data=np.array(rel, dtype=object), dtype=h5py.string_dtype())
        f.attrs["skipped"] = np.array(skipped, dtype=object) if skipped else np.array([], dtype="S1")
    return {"output": str(target), "n_images": int(ok.sum()), "embed_dim": enc.embed_dim, "skipped": skipped}
