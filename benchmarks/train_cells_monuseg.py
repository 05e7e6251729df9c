"""Train hovernet-lite on MoNuSeg with the shipped recipe and summarise the run for the docs.

Runs ``pathmllm.train.cells.train`` on ``configs/cells/monuseg.yaml`` (6 training images,
2 held out; see the config), then prints: the machine and its load, wall and CPU time,
the loss every ``--every`` steps, the held-out evaluations made during training, and the
held-out Dice / AJI / F1 / PQ per image of the final weights next to the default
(no-weights) watershed backend on the same images.

Run::

    .venv/bin/python benchmarks/train_cells_monuseg.py                      # train, then summarise
    .venv/bin/python benchmarks/train_cells_monuseg.py --run out/cells-monuseg    # summarise a finished run
    .venv/bin/python benchmarks/train_cells_monuseg.py optim.steps=200 out=benchmarks/_work/cells-short

Extra ``key.path=value`` arguments override the config, as with ``pathmllm train cells``.
The images stay where they are (MoNuSeg is CC BY-NC-SA; nothing is copied into the repo).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, WORK, print_machine, table, wait_for_idle  # noqa: E402

CONFIG = REPO / "configs" / "cells" / "monuseg.yaml"


def loss_table(log_path: Path, every: int) -> str:
    """Mean of each loss term over the ``every`` steps ending at each row."""
    steps = [json.loads(x) for x in log_path.read_text().splitlines() if '"loss"' in x]
    keys = ["loss", "fg_bce", "fg_dice", "hv_mse", "hv_msge", "dist"]
    rows = []
    for end in range(every, len(steps) + 1, every):
        chunk = steps[end - every : end]
        rows.append([end, *(f"{np.mean([s[k] for s in chunk]):.3f}" for k in keys),
                     f"{chunk[-1]['lr']:.2e}", f"{chunk[-1]['seconds'] / 60:.1f}"])
    return table(["step", *keys, "lr", "min"], rows)


def eval_table(log_path: Path) -> str | None:
    evals = [json.loads(x) for x in log_path.read_text().splitlines() if '"eval"' in x]
    if not evals:
        return None
    return table(["step", "Dice", "AJI", "F1", "PQ"],
                 [[e["step"], *(f"{e['eval'][k]:.3f}" for k in ("dice", "aji", "f1", "pq"))] for e in evals])


def compare(run: Path, root: str, names: list[str]) -> str:
    from pathmllm.cells.base import build_segmenter
    from pathmllm.cells.datasets import load_monuseg_folder
    from pathmllm.cells.metrics import score

    segs = {"hovernet-lite": build_segmenter("hovernet-lite", weights=run / "model.pt"),
            "watershed": build_segmenter("watershed")}
    rows = []
    means: dict[str, list[list[float]]] = {k: [] for k in segs}
    for s in load_monuseg_folder(root, names=names):
        for k, seg in segs.items():
            sc = score(s.labels, seg.segment(s.image, s.mpp))
            vals = [sc.dice, sc.aji, sc.f1, sc.pq]
            means[k].append(vals)
            rows.append([s.name, k, *(f"{v:.3f}" for v in vals), sc.n_true, sc.n_pred])
    for k, v in means.items():
        rows.append(["**mean**", k, *(f"{x:.3f}" for x in np.mean(v, axis=0)), "", ""])
    return table(["image", "backend", "Dice", "AJI", "F1", "PQ", "true", "pred"], rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="config overrides key.path=value")
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--run", type=Path, help="summarise this finished run instead of training")
    ap.add_argument("--every", type=int, default=100, help="loss table row every N steps")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for the cores to be idle first")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from pathmllm.train.cells import load_config, train

    if args.run is None:
        cfg = load_config(args.config, [f"out={WORK / 'cells-monuseg'}", *args.overrides])
        if not args.no_wait:
            wait_for_idle(0.5, 600)
        print_machine()
        run = train(cfg, overwrite=True).out
    else:
        run = args.run
        cfg = load_config(run / "config.yaml", args.overrides)
        print_machine()
    metrics = json.loads((run / "metrics.json").read_text())
    print(f"\nrun {run}: {metrics['steps']} steps, {metrics['train_seconds'] / 60:.1f} min wall, "
          f"{metrics.get('cpu_seconds', float('nan')) / 60:.1f} CPU-min ({metrics.get('threads')} threads), "
          f"load average at the end {metrics.get('load_average')}\n")
    print(loss_table(run / "log.jsonl", args.every))
    ev = eval_table(run / "log.jsonl")
    if ev:
        print("\nheld-out evaluations during training (reported only):\n" + ev)
    print("\nheld-out images, final weights vs the watershed backend:\n" + compare(run, cfg.data.root, cfg.data.val))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
