"""Feature-extraction throughput: is the model kept busy, and how much faster than a simple loop?

Measured on the example slide's patches (``min_tissue=0``: every patch touching tissue,
256 px at 0.5 µm/px, resized to the encoder's 224 px), with a ViT-S/16-sized encoder
(timm ``vit_small_patch16_224``, random weights: the speed of trained ones), batch 64, CPU:

* ``model only``: the same batches, already read and decoded into memory, through
  ``preprocess`` + forward under ``inference_mode`` (the ceiling);
* ``pathmllm``: ``extract_slide_features`` end to end (on the CPU a reader thread prefetches
  batches while the model runs, on a GPU DataLoader worker processes; the tiled store already
  exists, as in a batch run);
* ``simple loop``: read a patch, transform it (PIL resize, to tensor, normalise), forward one
  batch at a time, no workers, ``torch.no_grad``;
* ``per-patch loop``: the same, forwarding each patch alone (batch 1).

``--precision int8`` runs pathmllm and the model-only reference with the encoder's linear
layers in dynamic int8 (the simple loops stay float32, as they would be written) and prints
how far that moves the features (cosine with float32 on the same patches).

Ratios: **feeding** = pathmllm / model only (target >= 0.9); **speed-up** = pathmllm / simple
loop (target >= 2 on this 2-core machine). Each of the first three methods runs once untimed
(torch builds CPU kernels per new tensor shape), then all run in rounds in rotating order;
medians. The example slide has 64 patches: use ``--batch-size 16`` so reading can overlap
the model (one batch of 64 leaves nothing to overlap).

Run::

    .venv/bin/python benchmarks/bench_features.py            # 3 rounds
    .venv/bin/python benchmarks/bench_features.py --quick    # 1 round, fewer patches
    .venv/bin/python benchmarks/bench_features.py --encoder uni --device cuda --batch-size 256  # on a GPU
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import EXAMPLE_SLIDE, WORK, median, print_machine, table  # noqa: E402

from pathmllm.encoders.extract import ExtractConfig, extract_slide_features  # noqa: E402
from pathmllm.encoders.registry import build_encoder  # noqa: E402
from pathmllm.wsi import open_slide  # noqa: E402
from pathmllm.wsi.pipeline import tile_slide  # noqa: E402
from pathmllm.wsi.store import SlideStore  # noqa: E402
from pathmllm.wsi.tiling import TilingConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", default="vit-s16")
    ap.add_argument("--slide", type=Path, default=EXAMPLE_SLIDE)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--num-workers", default=None,
                    help="DataLoader worker processes (default: pathmllm's choice); a list (4,8,12) times each")
    ap.add_argument("--no-per-patch", action="store_true", help="skip the batch-1 loop (slow on big slides)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                    help="pathmllm's precision (and the model-only reference's); the simple loops stay float32")
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds
    device = torch.device(args.device)
    from pathmllm.encoders.extract import autocast_dtype, precision_label

    dtype = autocast_dtype(device, args.precision)
    out = WORK / "features"
    shutil.rmtree(out, ignore_errors=True)
    tiling = TilingConfig(min_tissue=0.0)
    store = SlideStore.open(tile_slide(args.slide, out, tiling).store)
    coords, attrs = store.coords()
    if args.quick:
        coords = coords[: args.batch_size * 2]
    n = len(coords)
    enc = build_encoder(args.encoder, device=device, allow_random=True)
    spec = enc.spec
    from pathmllm.encoders.extract import quantize_int8

    run_enc = quantize_int8(enc) if args.precision == "int8" else enc  # pathmllm's and model-only's model
    slide = open_slide(args.slide)
    plan = slide.plan(float(attrs["target_mpp"]), int(attrs["patch_size"]))
    decoded = [np.stack([slide.read_patch(tuple(c), plan.patch_size, plan=plan) for c in coords[i:i + args.batch_size]])
               for i in range(0, n, args.batch_size)]
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)

    def model_only() -> float:
        t = time.perf_counter()
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            for batch in decoded:
                run_enc(run_enc.preprocess(torch.from_numpy(batch).to(device)))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    def pathmllm(workers: int | None) -> float:
        for p in store.root.glob("features_*"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        cfg = ExtractConfig(args.encoder, batch_size=args.batch_size, num_workers=workers,
                            device=args.device, allow_random=True, precision=args.precision)
        t = time.perf_counter()
        res = extract_slide_features(args.slide, out, cfg, tiling)
        assert res.n_patches >= n
        return (time.perf_counter() - t) * n / res.n_patches

    def transform(img: Image.Image) -> torch.Tensor:
        img = img.resize((spec.input_size, spec.input_size), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0
        return (x - mean) / std

    def simple(batch: int) -> float:
        import openslide

        osl = openslide.OpenSlide(str(args.slide))
        t = time.perf_counter()
        with torch.no_grad():
            for i in range(0, n, batch):
                xs = []
                for x, y in coords[i:i + batch]:
                    img = osl.read_region((int(x), int(y)), plan.level, (plan.read_size, plan.read_size)).convert("RGB")
                    xs.append(transform(img))
                enc(torch.stack(xs).to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    from pathmllm.encoders import extract

    extract._MODELS[(args.encoder, None, str(device), True)] = enc  # reuse the same model objects
    extract._MODELS[(args.encoder + "#int8", None, str(device), True)] = run_enc
    worker_counts = [None] if args.num_workers is None else [int(w) for w in str(args.num_workers).split(",")]
    ours = ["pathmllm" if w is None else f"pathmllm, {w} workers" for w in worker_counts]
    methods = {"model only": model_only,
               **{name: (lambda w=w: pathmllm(w)) for name, w in zip(ours, worker_counts, strict=True)},
               "simple loop": lambda: simple(args.batch_size)}
    if not args.no_per_patch:
        methods["per-patch loop"] = lambda: simple(1)
    times: dict[str, list[float]] = {k: [] for k in methods}
    names = list(methods)
    for k in names[:2] + ["simple loop"]:  # warm-up, untimed: torch builds kernels for each new tensor shape
        methods[k]()
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            times[k].append(methods[k]())
            print(f"round {r + 1} {k}: {times[k][-1]:.2f} s", flush=True)
    print_machine()
    print(f"encoder {args.encoder} ({spec.architecture}, {spec.embed_dim}-d, random weights), {n} patches, "
          f"batch {args.batch_size}, device {device}, torch threads {torch.get_num_threads()}, "
          f"loader workers {args.num_workers}, pathmllm precision {args.precision} "
          f"({precision_label(args.precision, dtype)}; the simple loops: float32)\n")
    med = {k: median(v) for k, v in times.items()}
    best = min(ours, key=lambda k: med[k])
    rows = [[k, " ".join(f"{t:.2f}" for t in times[k]), f"{med[k]:.2f}", f"{n / med[k]:.1f}",
             f"{med[k] / med[best]:.2f}x"] for k in names]
    print(table(["method", "round times (s)", "median (s)", "patches/s", f"time vs {best}"], rows))
    print(f"\nfeeding ratio ({best} / model only patches/s): {med['model only'] / med[best]:.3f}  (target >= 0.9)")
    print(f"speed-up over the simple loop: {med['simple loop'] / med[best]:.2f}x  (target >= 2)")
    if "per-patch loop" in med:
        print(f"speed-up over the per-patch loop: {med['per-patch loop'] / med[best]:.2f}x")
    if args.precision != "fp32":  # how far the faster arithmetic moves the features
        with torch.inference_mode():
            ref = torch.cat([enc(enc.preprocess(torch.from_numpy(b).to(device))) for b in decoded]).float()
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                got = torch.cat([run_enc(run_enc.preprocess(torch.from_numpy(b).to(device))) for b in decoded])
        cos = torch.nn.functional.cosine_similarity(got.float(), ref)
        print(f"features vs float32 ({args.precision}): cosine mean {cos.mean():.4f}, min {cos.min():.4f}")


if __name__ == "__main__":
    main()
