"""Patch features of whole slides, with the model kept busy.

DataLoader workers (each with its own slide handle) read batches of patches (a row of
touching patches in one read call) while the model runs; batches travel as uint8 (4x less
than float) in pinned memory on GPU and are resized and normalised on the device; AMP on
GPU. Output, beside ``coords.h5`` in the slide store::

    features_<encoder>.h5      features float32 (N, D) [attrs name, savetodir, encoder]
                               coords int64 (N, 2) [every coords.h5 attribute copied] (TRIDENT's layout)
                               region_features (R, D), region_index (R,), slide_features (D,): means

Resumable: every ``chunk_patches`` patches are saved to ``features_<encoder>.parts/`` as they
finish; a rerun computes only missing chunks. ``--layout`` also writes CLAM's
``h5_files``/``pt_files`` and TRIDENT's ``features_<encoder>/`` files.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from pathmllm.encoders.base import PatchEncoder
from pathmllm.utils.atomic import atomic_path
from pathmllm.wsi.reader import Slide
from pathmllm.wsi.resolution import ReadPlan
from pathmllm.wsi.store import SlideStore
from pathmllm.wsi.tiling import TilingConfig

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16", "int8")


@dataclass
class ExtractConfig:
    """How patch features are computed."""

    encoder: str
    """Registered encoder name (``pathmllm models ls``), or ``timm:``/``hf:``/``open_clip:`` + architecture."""
    weights: str | None = None
    """Local weights (file or folder); default: ``$PATHMLLM_WEIGHTS`` lookup."""
    batch_size: int = 64
    num_workers: int | None = None
    """DataLoader worker processes reading patches. Default: on a GPU, cores - 1 (1 to 8); on
    the CPU, none: one reader thread in this process prefetches batches (reads and decoding
    release the GIL), so no worker start-up and the cores stay with the model."""
    device: str = "auto"
    """``auto`` (cuda when available), ``cpu``, ``cuda``, ``cuda:1`` ..."""
    precision: Precision = "auto"
    """``auto``: bf16 autocast on GPUs that support it, else fp16 on GPU, fp32 on CPU.
    ``int8`` (CPU only): the encoder's linear layers in dynamic int8 (:func:`quantize_int8`),
    about 1.5x faster on an AVX2 CPU, features within about 0.5 % (cosine) of fp32."""
    chunk_patches: int = 2048
    """Resume granularity (rounded up to a multiple of batch_size)."""
    allow_random: bool = False
    """Use random weights when none are found (benchmarks only)."""


def safe_name(encoder: str) -> str:
    """An encoder name usable in file names (``timm:vit_small`` -> ``timm-vit_small``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", encoder).strip("-")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
    return dev


def autocast_dtype(device: torch.device, precision: Precision) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: no autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "int8":
        if device.type != "cpu":
            raise ValueError("precision int8 is a CPU mode (dynamic int8 linear layers); "
                             "on a GPU use auto, bf16 or fp16, or give --device cpu")
        return None
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


_MODELS: dict[tuple[str, str | None, str, bool], PatchEncoder] = {}


def cached_encoder(name: str, weights: str | None, device: torch.device, allow_random: bool,
                   precision: str = "auto") -> PatchEncoder:
    """One model per process and device, reused across slides (and across Ray tasks).

    ``precision="int8"`` gives the int8 copy of that model (:func:`quantize_int8`), also cached.
    """
    from pathmllm.encoders.registry import build_encoder

    key = (name, weights, str(device), allow_random)
    if key not in _MODELS:
        _MODELS[key] = build_encoder(name, weights=weights, device=device, allow_random=allow_random)
    if precision != "int8":
        return _MODELS[key]
    qkey = (name + "#int8", weights, str(device), allow_random)
    if qkey not in _MODELS:
        _MODELS[qkey] = quantize_int8(_MODELS[key])
    return _MODELS[qkey]


def quantize_int8(encoder: PatchEncoder) -> PatchEncoder:
    """A copy of ``encoder`` whose ``nn.Linear`` layers run in dynamic int8 on the CPU.

    Weights are quantised once, per output channel; activations per batch at run time
    (PyTorch's dynamic quantisation, the fbgemm/x86 kernels). Convolutions, attention,
    normalisation and activations stay float32. On transformers (where the linear layers are
    most of the work) this is the one way to a forward well over 1.2x faster than float32 on
    a CPU without bfloat16 units; the features move by about 0.5 % in cosine (measured in
    ``benchmarks/bench_features.py``). An encoder with no linear layer (CNNs without a head,
    ``handcrafted``) is refused: int8 would change nothing there.
    """
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if not any(isinstance(m, torch.nn.Linear) for m in encoder.modules()):
        raise ValueError(f"precision int8 quantises linear layers, and encoder {encoder.name!r} has none "
                         "(int8 would change nothing): use fp32")
    if next(encoder.parameters(), torch.empty(0)).device.type != "cpu":
        raise ValueError("int8 quantisation runs on the CPU; move the encoder to the CPU first")
    with warnings.catch_warnings():  # torch.ao's pointer to torchao; the eager API still works
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantized = quantize_dynamic(encoder, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=False)
    return quantized.eval()


class PatchBatches(torch.utils.data.Dataset):
    """Item ``i``: the uint8 patches ``(B, S, S, 3)`` of batch ``batches[i]`` (a slice of coords)."""

    def __init__(self, slide_path: str, backend: str, mpp: float | None, coords: np.ndarray,
                 plan: ReadPlan, step: int, batches: list[tuple[int, int]]) -> None:
        self.slide_path, self.backend, self.mpp = slide_path, backend, mpp
        self.coords, self.plan, self.step, self.batches = coords, plan, step, batches
        self._slide: Slide | None = None

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        from pathmllm.wsi.export import read_patches

        if self._slide is None:  # opened in the worker process, never shared across a fork
            self._slide = Slide(self.slide_path, backend=self.backend, mpp=self.mpp)
        start, stop = self.batches[i]
        arrays = list(read_patches(self._slide, self.coords[start:stop], self.plan, self.step))
        return start, torch.from_numpy(np.stack(arrays))


def embed_batch(encoder: PatchEncoder, images: torch.Tensor, device: torch.device,
                dtype: torch.dtype | None) -> np.ndarray:
    """uint8 ``(B, H, W, 3)`` -> float32 ``(B, D)`` on ``device`` (resize + normalise there)."""
    x = images.to(device, non_blocking=True)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        feats = encoder(encoder.preprocess(x))
    return feats.float().cpu().numpy()


@dataclass
class FeaturesResult:
    slide: str
    store: str
    status: str
    encoder: str
    n_patches: int
    embed_dim: int
    seconds: float
    patches_per_second: float
    output: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def extract_slide_features(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: ExtractConfig,
    tiling: TilingConfig | None = None,
    backend: str = "auto",
    mpp: float | None = None,
    layouts: tuple[str, ...] = (),
    force: bool = False,
) -> FeaturesResult:
    """Features of every patch of one slide (tiling it first where needed)."""
    from pathmllm.wsi.pipeline import tile_slide

    t0 = time.perf_counter()
    device = resolve_device(config.device)  # bad device or precision: say so before any work
    dtype = autocast_dtype(device, config.precision)
    tiled = tile_slide(path, out, tiling, backend=backend, mpp=mpp, layouts=tuple(layouts))
    store = SlideStore.open(tiled.store)
    enc_name = safe_name(config.encoder)
    stage = f"features_{enc_name}"
    target = store.path(f"{stage}.h5")
    parts_dir = store.path(f"{stage}.parts")
    params = {k: v for k, v in asdict(config).items() if k in ("encoder", "weights", "allow_random")}
    if config.precision == "int8":  # a different model: its features are not mixed with fp32 ones
        params["quantized"] = "int8"
    if store.is_done(stage) and not force and store.stage_info(stage).get("params") == params:
        info = store.stage_info(stage)
        if layouts:
            export_feature_layouts(store, Path(out), enc_name, layouts)
        return FeaturesResult(store.slide_name, str(store.root), "skipped", config.encoder, info["n_patches"],
                              info["embed_dim"], time.perf_counter() - t0, 0.0, str(target))
    if force or (parts_dir / "params.txt").exists() and (parts_dir / "params.txt").read_text() != repr(params):
        shutil.rmtree(parts_dir, ignore_errors=True)
    parts_dir.mkdir(parents=True, exist_ok=True)
    (parts_dir / "params.txt").write_text(repr(params))

    encoder = cached_encoder(config.encoder, config.weights, device, config.allow_random, config.precision)
    coords, attrs = store.coords()
    info = store.patch_info()
    with Slide(path, backend=backend, mpp=mpp) as slide:
        tol = float(store.manifest()["params"]["tiling"].get("mpp_tolerance", 0.02))
        plan = slide.plan(float(attrs["target_mpp"]), int(attrs["patch_size"]), tol)
        reader = slide.backend
    step = int(attrs.get("step_level0", plan.patch_size_level0))
    bs = max(1, config.batch_size)
    chunk = max(bs, (config.chunk_patches + bs - 1) // bs * bs)
    n = len(coords)
    todo_chunks = [c for c in range(0, n, chunk) if not (parts_dir / f"part-{c // chunk:05d}.npy").exists()]
    batches = [(s, min(s + bs, c + chunk, n)) for c in todo_chunks for s in range(c, min(c + chunk, n), bs)]
    if config.num_workers is not None:
        workers = config.num_workers
    else:
        workers = 0 if device.type == "cpu" else max(1, min(8, (os.cpu_count() or 2) - 1))
    t_model = time.perf_counter()
    if batches:
        ds = PatchBatches(str(path), reader, mpp, coords, plan, step, batches)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=None, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda",
            prefetch_factor=4 if workers > 0 else None, persistent_workers=False,
        )
        pending: dict[int, list[np.ndarray]] = {}
        for start, images in (prefetch_in_thread(loader, depth=2) if workers == 0 else loader):
            feats = embed_batch(encoder, images, device, dtype)
            c = start // chunk * chunk
            pending.setdefault(c, []).append(feats)
            if sum(len(f) for f in pending[c]) == min(chunk, n - c):
                with atomic_path(parts_dir / f"part-{c // chunk:05d}.npy") as tmp:
                    with open(tmp, "wb") as fh:
                        np.save(fh, np.concatenate(pending.pop(c)).astype(np.float32))
    seconds_model = time.perf_counter() - t_model
    n_computed = sum(stop - start for start, stop in batches)
    rate = n_computed / seconds_model if n_computed else 0.0
    parts = [np.load(parts_dir / f"part-{c // chunk:05d}.npy") for c in range(0, n, chunk)]
    features = np.concatenate(parts) if parts else np.zeros((0, encoder.embed_dim), np.float32)
    if features.shape != (n, encoder.embed_dim):
        raise RuntimeError(f"{store.root}: assembled features {features.shape}, expected {(n, encoder.embed_dim)}")
    label = precision_label(config.precision, dtype)
    write_features_h5(target, features, coords, attrs, info.get("region_index"), store.slide_name,
                      str(store.root), config.encoder, label)
    shutil.rmtree(parts_dir, ignore_errors=True)
    seconds = time.perf_counter() - t0
    store.mark_done(stage, seconds, [target.name], n_patches=n, embed_dim=encoder.embed_dim, params=params,
                    device=str(device), precision=label,
                    patches_per_second=round(rate, 2))
    if layouts:
        export_feature_layouts(store, Path(out), enc_name, layouts)
    return FeaturesResult(store.slide_name, str(store.root), "done", config.encoder, n, encoder.embed_dim, seconds,
                          rate, str(target))


def precision_label(precision: str, dtype: torch.dtype | None) -> str:
    """What the features were computed in: ``float32``, ``bfloat16``, ``float16`` or ``int8``."""
    if precision == "int8":
        return "int8"
    return str(dtype).replace("torch.", "") if dtype else "float32"


def prefetch_in_thread(items: Any, depth: int = 2) -> Any:
    """Iterate ``items`` in a background thread, ``depth`` items ahead; errors are re-raised here."""
    import queue
    import threading

    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                q.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put("item", item):
                    return
            put("end", None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put("error", exc)

    thread = threading.Thread(target=produce, name="pathmllm-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join(timeout=5)


def write_features_h5(path: Path, features: np.ndarray, coords: np.ndarray, coords_attrs: dict[str, Any],
                      region_index: np.ndarray | None, name: str, savetodir: str, encoder: str,
                      precision: str = "float32") -> None:
    """TRIDENT's patch-features file, plus region- and slide-level mean features.

    ``precision`` (what the model computed in) is kept as an attribute of ``features``."""
    import h5py

    features = np.asarray(features, dtype=np.float32)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        d = f.create_dataset("features", data=features)
        d.attrs.update({"name": name, "savetodir": savetodir, "encoder": encoder, "precision": precision})
        c = f.create_dataset("coords", data=np.asarray(coords, dtype=np.int64))
        for k, v in coords_attrs.items():
            c.attrs[k] = v
        if region_index is not None and len(region_index) == len(features) and len(features):
            regions = np.unique(region_index)
            sums = np.zeros((int(regions.max()) + 1, features.shape[1]), np.float64)
            np.add.at(sums, region_index, features)
            counts = np.bincount(region_index, minlength=len(sums))
            means = sums[regions] / counts[regions, None]
            f.create_dataset("region_features", data=means.astype(np.float32)).attrs["pooling"] = "mean"
            f.create_dataset("region_index", data=regions.astype(np.int32))
        slide_vec = features.mean(axis=0) if len(features) else np.zeros(features.shape[1], np.float32)
        f.create_dataset("slide_features", data=slide_vec.astype(np.float32)).attrs["pooling"] = "mean"


def export_feature_layouts(store: SlideStore, out: Path, enc_name: str, layouts: tuple[str, ...]) -> list[Path]:
    """Place features where CLAM (``h5_files``, ``pt_files``) and TRIDENT (``features_<enc>/``) look."""
    import h5py

    from pathmllm.wsi.coords_h5 import link_or_copy, trident_dir_name

    src = store.path(f"features_{enc_name}.h5")
    with h5py.File(src, "r") as f:
        features = f["features"][:]
        coords = f["coords"][:]
        attrs = dict(f["coords"].attrs)
    written = []
    if "trident" in layouts:
        dst = out / "trident" / trident_dir_name(attrs) / f"features_{enc_name}" / f"{store.slide_name}.h5"
        link_or_copy(src, dst)
        written.append(dst)
    if "clam" in layouts:
        h5 = out / "clam" / "h5_files" / f"{store.slide_name}.h5"
        with atomic_path(h5) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=features, chunks=(min(32, max(len(features), 1)), features.shape[1]),
                             maxshape=(None, features.shape[1]))
            f.create_dataset("coords", data=coords.astype(np.int32), chunks=(min(32, max(len(coords), 1)), 2),
                             maxshape=(None, 2))
        pt = out / "clam" / "pt_files" / f"{store.slide_name}.pt"
        with atomic_path(pt) as tmp:
            torch.save(torch.from_numpy(features), tmp)
        written += [h5, pt]
    return written
