"""Does the MedPLIB-style grounding model learn? Three stages from tiny presets on Kvasir-SEG (CPU).

    .venv/bin/python benchmarks/ground_kvasir.py --out /tmp/ground-kvasir [overrides for every stage]

1. ``pathmllm data kvasir``: the shared Kvasir-SEG images (256 px; boxes rescaled from the original
   resolution) become MeCoVQA records: "Segment the polyp." -> ``<SEG>`` + mask, and "Is there a
   polyp in this region?" on the polyp's box (yes) and on a same-size background box (no); a
   seeded 70/30 split by image.
2. ``train ground --stage vl`` (region questions), ``--stage seg`` (from the vl model; grounding),
   ``--stage moe`` (from the seg model, experts = the vl and seg FFNs, router trained on all
   records), each with ``configs/ground/kvasir.yaml`` and a time budget.
3. Held-out evaluation of the final (MoE) model: mean Dice of the ``<SEG>`` masks, and accuracy on
   the region questions (polyp box vs background box); the seg-stage model and the
   "always the training set's mean mask" baseline are scored on the same images for scale.

Writes ``OUT/results.json`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
KVASIR = REPO.parent / "shared" / "data" / "grounding" / "kvasir-seg"
CONFIG = REPO / "configs" / "ground" / "kvasir.yaml"


def run_stage(out: Path, stage: str, overrides: list[str]) -> dict:
    from pathmllm.train.ground import load_config, train

    cfg = load_config(CONFIG, overrides, stage=stage)
    result = train(cfg, overwrite=True)
    return result.metrics


def mean_mask_baseline(data: Path, root: Path) -> dict:
    """Held-out Dice of always predicting the training set's mean polyp mask, binarised at the
    threshold that maximises the mean Dice on the training images themselves."""
    from pathmllm.bench.seg_metrics import SegmentationScores
    from pathmllm.data.mecovqa import load_mask, read_mecovqa

    records, _ = read_mecovqa(data, root)
    seg = [r for r in records if r.has_seg and r.target_mask is not None]
    train = np.array([load_mask(r.target_mask) for r in seg if r.meta.get("split") == "train"])
    test = [load_mask(r.target_mask) for r in seg if r.meta.get("split") == "test"]
    mean = train.mean(axis=0)

    def mdice(pred: np.ndarray, targets: list | np.ndarray) -> float:
        return float(np.mean([2 * (pred & t).sum() / max(1, pred.sum() + t.sum()) for t in targets]))

    thresholds = np.round(np.arange(0.05, 0.55, 0.05), 2)
    best = max(thresholds, key=lambda t: mdice(mean >= t, train))
    scores = SegmentationScores()
    for t in test:
        scores.add(mean >= best, t)
    return {"mDice": scores.summary()["mDice"], "n": len(scores), "threshold": float(best)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("/tmp/ground-kvasir"))
    p.add_argument("--kvasir", type=Path, default=KVASIR)
    p.add_argument("--minutes", type=float, nargs=3, default=[2.5, 5.8, 1.5], metavar=("VL", "SEG", "MOE"),
                   help="time budget of each stage")
    p.add_argument("--steps", type=int, nargs=3, default=[1500, 2000, 300], metavar=("VL", "SEG", "MOE"),
                   help="step budget of each stage (the first budget reached stops it)")
    p.add_argument("--max-eval", type=int, default=400, help="held-out records evaluated")
    p.add_argument("--final-eval-only", action="store_true",
                   help="evaluate only the final (moe) model (the vl and seg figures are then absent)")
    p.add_argument("overrides", nargs="*", help="config overrides for every stage, e.g. optim.batch_size=8")
    args = p.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    from pathmllm.data.mecovqa import kvasir_to_mecovqa

    data = kvasir_to_mecovqa(args.kvasir, out / "data" / "mecovqa.json")
    common = [f"data.train={data}", f"data.image_root={args.kvasir}", f"data.max_eval={args.max_eval}",
              *args.overrides]
    early = ["data.eval=null"] if args.final_eval_only else [f"data.eval={data}"]
    results: dict = {"data": str(data)}
    t0 = time.perf_counter()
    vl, seg, moe = out / "vl", out / "seg", out / "moe"
    results["vl"] = run_stage(vl, "vl", [*common, *early, f"out={vl}", f"max_minutes={args.minutes[0]}",
                                         f"optim.steps={args.steps[0]}"])
    results["seg"] = run_stage(seg, "seg", [*common, *early, f"out={seg}", f"model.init={vl / 'model'}",
                                            f"max_minutes={args.minutes[1]}", f"optim.steps={args.steps[1]}"])
    results["moe"] = run_stage(moe, "moe", [*common, f"data.eval={data}", f"out={moe}", f"model.init={seg / 'model'}",
                                            f"moe.vl_model={vl / 'model'}", f"max_minutes={args.minutes[2]}",
                                            f"optim.steps={args.steps[2]}"])
    results["wall_seconds"] = round(time.perf_counter() - t0, 1)
    results["train_seconds"] = round(sum(results[s]["train_seconds"] for s in ("vl", "seg", "moe")), 1)
    results["mean_mask_baseline"] = mean_mask_baseline(data, args.kvasir)
    logs = [json.loads(x) for x in (moe / "log.jsonl").read_text().splitlines()]
    results["moe_routing_last"] = next((r["routing"] for r in reversed(logs) if "routing" in r), None)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    summary = {
        "train_minutes": round(results["train_seconds"] / 60, 2),
        "vl_region_accuracy": results["vl"].get("eval", {}).get("closed"),
        "seg_mDice": results["seg"].get("eval", {}).get("segmentation", {}).get("mDice"),
        "moe_mDice": results["moe"]["eval"]["segmentation"].get("mDice"),
        "moe_region_accuracy": results["moe"]["eval"]["closed"],
        "moe_seg_emitted": results["moe"]["eval"]["seg_emitted"],
        "mean_mask_baseline_mDice": results["mean_mask_baseline"]["mDice"],
    }
    results["summary"] = summary
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(summary, indent=2))
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    main()
