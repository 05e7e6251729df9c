"""How much does ``--precision int8`` change the features, and what does it buy on this CPU?

Embeds the 600 real LC25000 lung tiles (``../shared/data/tiles/lc25000-lung``, 3 classes,
``groups.csv``) with ``embed_folder`` twice, float32 and int8 (the same model object: ViT-S/16
with random weights unless ``--weights`` is given, which times the same as trained weights),
and reports:

* time of each pass (images read, resized, embedded; the same DataLoader settings);
* cosine similarity between the int8 and float32 vector of each tile;
* kNN (k = 20) and logistic-regression balanced accuracy on a group-aware 70/30 split
  (no near-duplicate group on both sides), from each set of vectors, and how often the two
  sets of predictions agree.

Random weights give weak features: the accuracies show that int8 and float32 features rank
and separate the tiles alike, not how good a trained encoder is.

Run::

    .venv/bin/python benchmarks/int8_fidelity.py
    .venv/bin/python benchmarks/int8_fidelity.py --encoder uni --weights /models/uni   # real weights
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, print_machine, table  # noqa: E402

from pathmllm.bench.metrics import balanced_accuracy  # noqa: E402
from pathmllm.bench.probe import knn_predict  # noqa: E402
from pathmllm.encoders import extract  # noqa: E402
from pathmllm.encoders.folder import embed_folder  # noqa: E402
from pathmllm.encoders.registry import build_encoder  # noqa: E402


def group_split(groups: list[str], seed: int = 0, test_fraction: float = 0.3) -> np.ndarray:
    """Boolean test mask: whole groups drawn at random until ``test_fraction`` of the rows."""
    rng = np.random.default_rng(seed)
    names = sorted(set(groups))
    rng.shuffle(names)
    test: set[str] = set()
    for g in names:
        if sum(x in test for x in groups) >= test_fraction * len(groups):
            break
        test.add(g)
    return np.array([g in test for g in groups])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", default="vit-s16")
    ap.add_argument("--weights", default=None, help="local weights (default: random weights)")
    ap.add_argument("--tiles", type=Path, default=None, help="default: ../shared/data/tiles/lc25000-lung")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    tiles = args.tiles or DATA / "tiles" / "lc25000-lung"
    rows = list(csv.DictReader(open(tiles / "groups.csv")))
    key = (args.encoder, args.weights, "cpu", False)
    extract._MODELS[key] = build_encoder(args.encoder, weights=args.weights, device="cpu",
                                         allow_random=args.weights is None)
    feats: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "int8", "fp32", "int8"):  # two rounds each; the second is timed
            out = Path(tmp) / f"{precision}.h5"
            t = time.perf_counter()
            embed_folder(tiles, args.encoder, out, weights=args.weights, batch_size=args.batch_size,
                         num_workers=0, device="cpu", precision=precision)
            seconds[precision] = time.perf_counter() - t
            with h5py.File(out) as f:
                paths = [p.decode() for p in f["paths"][:]]
                feats[precision] = f["features"][:]
    label_of = {r["path"]: r["label"] for r in rows}
    group_of = {r["path"]: r["group"] for r in rows}
    classes = sorted(set(label_of.values()))
    y = np.array([classes.index(label_of[p]) for p in paths])
    test = group_split([group_of[p] for p in paths])
    a, b = feats["fp32"], feats["int8"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    preds: dict[str, dict[str, np.ndarray]] = {}
    for name, x in feats.items():
        scaler = StandardScaler().fit(x[~test])
        clf = LogisticRegression(max_iter=2000).fit(scaler.transform(x[~test]), y[~test])
        preds[name] = {"kNN (k=20)": knn_predict(x[~test], y[~test], x[test], k=20),
                       "logistic regression": clf.predict(scaler.transform(x[test]))}
    print_machine()
    print(f"encoder {args.encoder} ({'random weights' if args.weights is None else args.weights}), "
          f"{len(paths)} tiles of {tiles.name} ({len(classes)} classes), {int(test.sum())} held out by group, "
          f"batch {args.batch_size}, torch threads {torch.get_num_threads()}\n")
    print(table(["", "float32", "int8"],
                [["embedding time (s)", f"{seconds['fp32']:.1f}", f"{seconds['int8']:.1f}"],
                 ["tiles/s", f"{len(paths) / seconds['fp32']:.1f}", f"{len(paths) / seconds['int8']:.1f}"]]
                + [[f"{task}: balanced accuracy", f"{balanced_accuracy(y[test], preds['fp32'][task]):.3f}",
                    f"{balanced_accuracy(y[test], preds['int8'][task]):.3f}"] for task in preds["fp32"]]))
    print(f"\nspeed-up int8 / float32: {seconds['fp32'] / seconds['int8']:.2f}x")
    print(f"cosine(int8, float32) per tile: mean {cos.mean():.4f}, 1st percentile {np.percentile(cos, 1):.4f}, "
          f"min {cos.min():.4f}")
    for task in preds["fp32"]:
        agree = float((preds["fp32"][task] == preds["int8"][task]).mean())
        print(f"{task}: int8 and float32 predictions agree on {agree:.1%} of the held-out tiles")


if __name__ == "__main__":
    main()
