"""evaluate_grounding with a scripted fake model: Dice/IoU of the <SEG> masks against a numpy
reference, no <SEG> = empty prediction, seg_emitted rate, closed accuracy by first word, open
BLEU/ROUGE/token F1, per-modality figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pathmllm.bench.grounding import evaluate_grounding, first_word
from pathmllm.data.mecovqa import GroundingRecord

pytest.importorskip("nltk")
pytest.importorskip("rouge_score")

H, W = 24, 32


def _box(top: int, left: int, h: int, w: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[top:top + h, left:left + w] = True
    return m


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    Image.fromarray(arr).save(path)
    return path


def _dice_iou(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Reference Dice / IoU written here (both empty: 1)."""
    inter = np.logical_and(pred, target).sum()
    union = np.logical_or(pred, target).sum()
    total = pred.sum() + target.sum()
    if total == 0:
        return 1.0, 1.0
    return float(2 * inter / total), float(inter / union)


class FakeModel:
    """``generate`` returns the scripted ``(text, masks)`` for the record's question and records its
    arguments."""

    def __init__(self, script: dict[str, tuple[str, np.ndarray | None]]) -> None:
        self.script = script
        self.calls: list[dict] = []

    def generate(self, image, question, region, max_new_tokens=32):
        self.calls.append({"image": image, "question": question, "region": region,
                           "max_new_tokens": max_new_tokens})
        text, masks = self.script[question]
        return text, None if masks is None else torch.as_tensor(masks)


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    out = {}
    for i in range(3):
        out[f"img{i}"] = _png(tmp_path / f"img{i}.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    out["t_a"] = _png(tmp_path / "masks" / "a.png", _box(2, 3, 10, 12))
    out["t_b"] = _png(tmp_path / "masks" / "b.png", _box(10, 10, 8, 20))
    out["t_c"] = _png(tmp_path / "masks" / "c.png", _box(0, 0, 6, 6))
    out["region"] = _png(tmp_path / "regions" / "r.png", _box(4, 4, 8, 8))
    return out


def _rec(image: Path, q: str, a: str, *, target: Path | None = None, region: Path | None = None,
         answer_type: str | None = None, modality: str = "endoscopy", rid: str = "") -> GroundingRecord:
    return GroundingRecord(image=image, question=q, answer=a, region_mask=region, target_mask=target,
                           has_seg="<SEG>" in a, answer_type=answer_type, modality=modality, meta={"id": rid or q})


def test_dice_iou_match_numpy(files: dict[str, Path]) -> None:
    pred_a = _box(4, 5, 10, 10)  # overlaps target a
    pred_b1, pred_b2 = _box(10, 10, 8, 8), _box(12, 22, 6, 8)  # two <SEG> masks: united
    records = [
        _rec(files["img0"], "segment a", "<SEG>", target=files["t_a"], rid="a"),
        _rec(files["img1"], "segment b", "It is here <SEG> and <SEG>.", target=files["t_b"], rid="b",
             modality="ct"),
        _rec(files["img2"], "segment c", "<SEG>", target=files["t_c"], rid="c"),
    ]
    model = FakeModel({
        "segment a": ("<SEG>", pred_a[None]),
        "segment b": ("here <SEG> <SEG>", np.stack([pred_b1, pred_b2])),
        "segment c": ("I cannot see it.", None),  # no <SEG>: empty prediction, never a forced mask
    })
    result = evaluate_grounding(model, records, max_new_tokens=5)
    assert [c["max_new_tokens"] for c in model.calls] == [5, 5, 5]
    assert all(c["region"] is None for c in model.calls)
    assert all(isinstance(c["image"], np.ndarray) and c["image"].shape == (H, W, 3) for c in model.calls)

    expected = [_dice_iou(pred_a, _box(2, 3, 10, 12)),
                _dice_iou(pred_b1 | pred_b2, _box(10, 10, 8, 20)),
                (0.0, 0.0)]
    seg = result["segmentation"]
    assert seg["n"] == 3
    assert seg["mDice"] == pytest.approx(np.mean([d for d, _ in expected]))
    assert seg["mIoU"] == pytest.approx(np.mean([i for _, i in expected]))
    assert seg["n_empty_pred"] == 1 and seg["n_empty_target"] == 0
    preds = {p["id"]: p for p in result["predictions"]}
    for rid, (d, i) in zip("abc", expected, strict=True):
        assert preds[rid]["dice"] == pytest.approx(d) and preds[rid]["iou"] == pytest.approx(i)
    assert preds["c"]["dice"] == 0.0 and preds["c"]["emitted_seg"] is False
    assert preds["a"]["emitted_seg"] is True
    assert result["seg_emitted"] == pytest.approx(2 / 3)
    # cumulative Dice over all pixels
    t = [_box(2, 3, 10, 12), _box(10, 10, 8, 20), _box(0, 0, 6, 6)]
    p = [pred_a, pred_b1 | pred_b2, np.zeros((H, W), bool)]
    inter = sum(int((x & y).sum()) for x, y in zip(p, t))
    sizes = sum(int(x.sum() + y.sum()) for x, y in zip(p, t))
    assert seg["dice_cumulative"] == pytest.approx(2 * inter / sizes)
    # per modality
    assert seg["per_modality"]["ct"]["n"] == 1
    assert seg["per_modality"]["ct"]["mDice"] == pytest.approx(expected[1][0])
    assert seg["per_modality"]["endoscopy"]["mDice"] == pytest.approx((expected[0][0] + 0.0) / 2)
    assert result["closed"] == {"n": 0, "accuracy": None} and result["open"] == {"n": 0}
    assert result["n"] == 3


def test_no_seg_everywhere_scores_zero(files: dict[str, Path]) -> None:
    records = [_rec(files["img0"], "segment a", "<SEG>", target=files["t_a"]),
               _rec(files["img1"], "segment b", "<SEG>", target=files["t_b"])]
    result = evaluate_grounding(FakeModel({"segment a": ("no", None), "segment b": ("", None)}), records)
    assert result["seg_emitted"] == 0.0
    assert result["segmentation"]["mDice"] == 0.0 and result["segmentation"]["mIoU"] == 0.0
    assert result["segmentation"]["n_empty_pred"] == 2


def test_closed_accuracy_by_first_word(files: dict[str, Path]) -> None:
    records = [
        _rec(files["img0"], "q1", "yes", region=files["region"], answer_type="closed"),
        _rec(files["img0"], "q2", "No", region=files["region"], answer_type="closed"),
        _rec(files["img1"], "q3", "Yes", answer_type="closed", modality="ct"),
        _rec(files["img1"], "q4", "polyp"),  # one word, no answer_type: closed
    ]
    model = FakeModel({
        "q1": ("Yes.", None),                   # == "yes"
        "q2": ("no, there is nothing", None),   # first word
        "q3": ("Maybe yes", None),              # wrong
        "q4": ("<SEG> Polyp!", None),           # special tokens are not words
    })
    result = evaluate_grounding(model, records)
    assert result["closed"] == {"n": 4, "accuracy": pytest.approx(0.75)}
    assert [p["correct"] for p in result["predictions"]] == [True, True, False, True]
    # the region mask was loaded and handed to the model for the region questions
    assert model.calls[0]["region"].dtype == bool and model.calls[0]["region"].sum() == 64
    assert model.calls[2]["region"] is None
    per = result["per_modality"]
    assert set(per) == {"ct", "endoscopy"}
    assert per["endoscopy"]["closed"] == {"n": 3, "accuracy": pytest.approx(1.0)}
    assert per["ct"]["closed"] == {"n": 1, "accuracy": pytest.approx(0.0)}
    assert result["segmentation"] == {"n": 0} and result["seg_emitted"] is None


def test_first_word() -> None:
    assert first_word("Yes.") == "yes" == first_word("  <SEG>yes, it is")
    assert first_word("<|im_end|>") == "" and first_word("") == ""
    assert first_word("No!") == "no"


def test_open_answer_metrics(files: dict[str, Path]) -> None:
    records = [
        _rec(files["img0"], "describe", "a small red polyp on the left wall", answer_type="open"),
        _rec(files["img1"], "what", "an inflamed region", answer_type="open", modality="ct"),
    ]
    model = FakeModel({"describe": ("a small red polyp on the left wall", None),
                       "what": ("a normal <SEG> mucosa", None)})
    result = evaluate_grounding(model, records)
    o = result["open"]
    assert o["n"] == 2
    for k in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "token_f1"):
        assert k in o and 0.0 <= o[k] <= 1.0
    # special tokens are stripped from the hypothesis: "a normal mucosa" vs "an inflamed region"
    assert o["token_f1"] == pytest.approx(0.5)  # 1.0 for the first, 0.0 for the second
    per = result["per_modality"]
    assert per["endoscopy"]["open"]["token_f1"] == pytest.approx(1.0)
    assert per["endoscopy"]["open"]["rouge_l"] == pytest.approx(1.0)
    assert per["endoscopy"]["open"]["bleu1"] == pytest.approx(1.0)
    assert per["ct"]["open"]["token_f1"] == 0.0
    assert per["ct"]["closed"] == {"n": 0, "accuracy": None}
    assert result["closed"]["n"] == 0


def test_mixed_tasks_and_max_items(files: dict[str, Path]) -> None:
    records = [
        _rec(files["img0"], "segment a", "<SEG>", target=files["t_a"]),
        _rec(files["img0"], "q1", "Yes", region=files["region"], answer_type="closed"),
        _rec(files["img1"], "describe", "a polyp", answer_type="open"),
        _rec(files["img2"], "segment c", "<SEG>", target=files["t_c"]),
    ]
    model = FakeModel({"segment a": ("<SEG>", _box(2, 3, 10, 12)[None]), "q1": ("yes", None),
                       "describe": ("a polyp", None), "segment c": ("<SEG>", _box(0, 0, 6, 6)[None])})
    result = evaluate_grounding(model, records, max_items=3)
    assert result["n"] == 3 and len(model.calls) == 3
    assert result["segmentation"]["n"] == 1 and result["segmentation"]["mDice"] == pytest.approx(1.0)
    assert result["seg_emitted"] == 1.0
    assert result["closed"]["accuracy"] == 1.0 and result["open"]["token_f1"] == pytest.approx(1.0)
    assert [p["task"] for p in result["predictions"]] == ["grounding", "region", "vqa"]


def test_target_mask_of_wrong_size_fails_loudly(files: dict[str, Path], tmp_path: Path) -> None:
    small = _png(tmp_path / "masks" / "small.png", np.ones((5, 5), dtype=bool))
    records = [_rec(files["img0"], "segment a", "<SEG>", target=small)]
    with pytest.raises(ValueError, match="must match the image"):
        evaluate_grounding(FakeModel({"segment a": ("<SEG>", _box(0, 0, 5, 5)[None])}), records)


def test_seg_answer_without_mask_identical_answer_scores_one(files: dict[str, Path]) -> None:
    records = [_rec(files["img0"], "where", "The polyp is here <SEG>.")]
    assert records[0].has_seg and records[0].target_mask is None
    result = evaluate_grounding(FakeModel({"where": ("The polyp is here <SEG>.", None)}), records)
    assert result["open"]["n"] == 1
    assert result["open"]["token_f1"] == pytest.approx(1.0)
    assert result["open"]["rouge_l"] == pytest.approx(1.0)
