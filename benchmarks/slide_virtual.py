"""Does the hierarchical slide LLM learn? Three stages on virtual slides of real LC25000 tissue.

    .venv/bin/python benchmarks/slide_virtual.py --out /tmp/slide-virtual [--train-slides 36 --test-slides 15]

1. Tile groups of ``../shared/data/tiles/lc25000-lung`` are split 70/30 (by group, never by
   tile); virtual slides (6x6 fields of 256 px at 0.5 µm/px: 60 % one class, 20 % other
   classes, 20 % background) are mosaicked from each side with templated reports and a
   diagnosis question (chance 1/3).
2. Every slide is tiled (regions of 2x2 patches), its nuclei segmented (watershed) and its
   patches encoded (``handcrafted``), two slides at a time.
3. ``pathmllm train slide`` stages 1, 2 and 3 from ``tiny-qwen2-lm`` (configs/slide/virtual.yaml).
4. On the held-out slides: diagnosis accuracy, report BLEU/ROUGE-L/METEOR, report→slide
   Recall@K, and where the top evidence region and patches lie (fraction on tiles of the
   answered class vs that class's share of the slide's tissue patches: chance).

Writes ``<out>/results.json``; prints it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TILES = ROOT.parent / "shared" / "data" / "tiles" / "lc25000-lung"
CONFIG = ROOT / "configs" / "slide" / "virtual.yaml"


def build_cohorts(out: Path, n_train: int, n_test: int, workers: int = 2, seed: int = 0) -> dict:
    """Write the train and test cohorts and prepare every slide's store; returns timings."""
    import numpy as np
    import yaml

    from pathmllm.data.virtual_slides import make_virtual_cohort, read_tile_groups
    from pathmllm.models.hierarchy.pipeline import SlidePipelineSpec, prepare_slides

    rows = read_tile_groups(TILES)
    groups = sorted({g for _, _, g in rows})
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[str]] = {}
    for _, label, g in rows:
        by_class.setdefault(label, [])
        if g not in by_class[label]:
            by_class[label].append(g)
    train_g, test_g = [], []
    for _label, gs in sorted(by_class.items()):
        gs = sorted(gs)
        rng.shuffle(gs)
        cut = int(round(0.7 * len(gs)))
        train_g += gs[:cut]
        test_g += gs[cut:]
    assert not set(train_g) & set(test_g) and len(set(train_g) | set(test_g)) == len(groups)
    t0 = time.perf_counter()
    train = make_virtual_cohort(TILES, out / "train", n_train, groups=train_g, seed=seed, prefix="train")
    test = make_virtual_cohort(TILES, out / "test", n_test, groups=test_g, seed=seed + 1, prefix="test")
    t_make = time.perf_counter() - t0
    spec = SlidePipelineSpec(**yaml.safe_load(CONFIG.read_text())["pipeline"])
    t0 = time.perf_counter()
    _, problems = prepare_slides([s.path for s in train.slides + test.slides], out / "stores", spec, workers=workers)
    if problems:
        raise RuntimeError("preparing the virtual slides failed:\n" + "\n".join(problems))
    return {"make_s": round(t_make, 1), "prepare_s": round(time.perf_counter() - t0, 1),
            "train_slides": len(train.slides), "test_slides": len(test.slides),
            "train_groups": len(train_g), "test_groups": len(test_g)}


def run_stage(out: Path, stage: int, overrides: list[str]) -> dict:
    from pathmllm.train.slide import load_config, train

    args = [f"out={out / f'stage{stage}'}", f"data.train={out / 'train' / 'qa.jsonl'}",
            f"data.stores={out / 'stores'}", *overrides]
    if stage > 1:
        args.append(f"init={out / f'stage{stage - 1}' / 'model'}")
    if stage == 3:
        args.append(f"data.val={out / 'test' / 'qa.jsonl'}")
    cfg = load_config(CONFIG, args, stage=stage)
    res = train(cfg, overwrite=True)
    return res.metrics


def evidence_on_test(out: Path, top_patches: int = 3) -> dict:
    """Where the evidence for the model's own answers lies on the held-out slides."""
    import numpy as np

    from pathmllm.data.virtual_slides import class_name
    from pathmllm.models.hierarchy.ask import ask_slide, load_slide_model

    model, spec = load_slide_model(out / "stage3" / "model", device="cpu")
    labels: dict[str, dict[tuple[int, int], str]] = {}
    with (out / "test" / "cells.csv").open() as f:
        for row in csv.DictReader(f):
            labels.setdefault(row["slide_id"], {})[(int(row["x"]), int(row["y"]))] = row["label"]
    qa = [json.loads(line) for line in (out / "test" / "qa.jsonl").read_text().splitlines()]
    region_hits, patch_hits, chance, correct = [], [], [], []
    for q in qa:
        if q.get("task") != "diagnosis":
            continue
        slide = out / "test" / "slides" / f"{q['slide_id']}.tiff"
        res = ask_slide(model, spec, slide, q["question"], out / "stores", options=q["options"],
                        top_patches=top_patches, heatmap=out / "heatmaps" / f"{q['slide_id']}.png")
        from pathmllm.bench.text_metrics import closed_answer_letter

        letter = closed_answer_letter(res.answer, q["options"])
        correct.append(letter == q["answer_label"])
        if letter is None:
            continue
        answered = q["options"]["ABCD".index(letter)]
        lab = labels[q["slide_id"]]
        cls = {k: v for k, v in lab.items()}
        name_of = {class_name(v): v for v in set(cls.values())}
        target = name_of.get(answered)
        tissue = [v for v in cls.values() if v != "background"]
        chance.append(np.mean([v == target for v in tissue]))
        top_region = res.evidence.regions[0]
        inside = [v for (x, y), v in cls.items() if v != "background"
                  and top_region["x"] <= x < top_region["x"] + top_region["width"]
                  and top_region["y"] <= y < top_region["y"] + top_region["height"]]
        region_hits.append(np.mean([v == target for v in inside]) if inside else 0.0)
        patch_hits.append(np.mean([cls.get((p["x"], p["y"])) == target for p in res.evidence.patches]))
    return {"diagnosis_accuracy_via_ask": float(np.mean(correct)), "n": len(correct),
            "top_region_on_answered_class": round(float(np.mean(region_hits)), 3),
            f"top{top_patches}_patches_on_answered_class": round(float(np.mean(patch_hits)), 3),
            "chance_answered_class_share_of_tissue": round(float(np.mean(chance)), 3)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("/tmp/slide-virtual"))
    p.add_argument("--train-slides", type=int, default=36)
    p.add_argument("--test-slides", type=int, default=15)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--skip-build", action="store_true", help="reuse the cohorts and stores in --out")
    p.add_argument("overrides", nargs="*", help="config overrides for every stage, e.g. optim.steps=100")
    a = p.parse_args(argv)
    results: dict = {"machine": f"{os.cpu_count()} CPU", "loadavg_start": os.getloadavg()}
    if not a.skip_build:
        results["build"] = build_cohorts(a.out, a.train_slides, a.test_slides, a.workers)
    t0 = time.perf_counter()
    for stage in (1, 2, 3):
        results[f"stage{stage}"] = run_stage(a.out, stage, a.overrides)
    results["train_minutes"] = round((time.perf_counter() - t0) / 60, 2)
    results["evidence"] = evidence_on_test(a.out)
    results["loadavg_end"] = os.getloadavg()
    (a.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
