"""Slide-QA readers on fixture files written in each real layout (FORMATS.md §3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pathmllm.data.slide_qa import (
    SlideQARecord,
    exclude_slides,
    read_slide_qa,
    resolve_slide,
    write_slide_qa_jsonl,
)
from pathmllm.data.slide_qa_formats import split_inline_options

UUID = "0A1B2C3D-4E5F-6789-ABCD-EF0123456789"
STEM = f"TCGA-AA-0001-01Z-00-DX1.{UUID}"
STEM2 = "TCGA-BB-0002-01Z-00-DX1.11111111-2222-3333-4444-555555555555"


def _write_list(path: Path, records: list[object]) -> Path:
    """A pretty-printed JSON list, one record per line block, as the released files."""
    path.write_text("[\n" + ",\n".join(json.dumps(r, ensure_ascii=True) for r in records) + "\n]\n")
    return path


def _conv(q: str, a: str, reverse: bool = False) -> list[dict[str, str]]:
    turns = [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return turns[::-1] if reverse else turns


def test_wsi_bench_choice(tmp_path: Path) -> None:
    recs = [
        # 1: clean, options separated by one space
        {"id": f"{STEM}-1", "image": f"TCGA-BRCA/{STEM}.pt",
         "conversations": _conv("<image>\nWhat is the diagnosis? A) ductal B) lobular C) mucinous D) papillary", "B")},
        # 2: reversed turns, no <image>, three spaces, junk after the letter (kinds 1, 3)
        {"id": f"{STEM.lower()}-2", "image": f"TCGA-BRCA/{STEM.lower()}.pt",
         "conversations": _conv("Which grade?   A) G1   B) G2   C) G3", 'C"', reverse=True)},
        # 3: "A." delimiter and a stem that ends in "A." (kinds 2, 4), curly quote (kind 5)
        {"id": f"{STEM2}-1", "image": f"TCGA-LUAD/{STEM2}.pt",
         "conversations": _conv("<image>\nThe tumour\u2019s subtype is Luminal A. Which stage? A. I B. II C. III D. IV",
                                "D")},
        # 4: duplicate id (kind 6), answer letter outside options (kind 9) -> skipped
        {"id": f"{STEM}-1", "image": f"TCGA-BRCA/{STEM}.pt",
         "conversations": _conv("<image>\nPick one. A) x B) y", "D")},
        # 5: no gpt turn -> skipped
        {"id": f"{STEM}-3", "image": f"TCGA-BRCA/{STEM}.pt", "conversations": [{"from": "human", "value": "Q?"}]},
        # 6: no image: slide from id; open question with trailing whitespace (kind 10)
        {"id": f"{STEM2}-2", "conversations": _conv("Describe the tissue.<image>", "Dense stroma.  \n")},
    ]
    path = _write_list(tmp_path / "Diagnosis_choice_test.json", recs)
    records, problems = read_slide_qa(path)
    assert [r.index for r in records] == [0, 1, 2, 5]
    r1, r2, r3, r6 = records
    assert (r1.slide_id, r1.question, r1.options, r1.answer_label) == (
        STEM, "What is the diagnosis?", ["ductal", "lobular", "mucinous", "papillary"], "B")
    assert r1.task == "Diagnosis_choice" and not r1.is_report and r1.line == 2 and r1.answer_text == "lobular"
    assert r1.image == f"TCGA-BRCA/{STEM}.pt" and r1.record_id == f"{STEM}-1"
    assert (r2.question, r2.options, r2.answer_label, r2.answer) == ("Which grade?", ["G1", "G2", "G3"], "C", 'C"')
    assert r3.question == "The tumour's subtype is Luminal A. Which stage?"
    assert r3.options == ["I", "II", "III", "IV"] and r3.answer_label == "D"
    assert r6.slide_id == STEM2 and r6.options is None and r6.answer == "Dense stroma." and r6.question == \
        "Describe the tissue."
    msgs = [str(p) for p in problems]
    assert any(m.startswith(f"{path}:5: answer 'D' names none of the 2 options") for m in msgs), msgs
    assert any(m.startswith(f"{path}:6: no gpt turn") for m in msgs), msgs
    # duplicate ids of kept records are noted, not skipped; here the duplicate was skipped
    assert all(p.skipped for p in problems)
    # UUID case-insensitive resolution
    slides = {STEM: tmp_path / f"{STEM}.svs", STEM2: tmp_path / f"{STEM2}.svs"}
    assert resolve_slide(r2, slides) == tmp_path / f"{STEM}.svs"


def test_wsi_bench_report_and_tf_and_duplicates(tmp_path: Path) -> None:
    recs = [
        {"id": f"{STEM}-1", "image": f"TCGA-BRCA/{STEM}.pt", "conversations": _conv("<image>\nWrite a report.", "R1")},
        {"id": f"{STEM}-1", "image": f"TCGA-BRCA/{STEM}.pt", "conversations": _conv("<image>\nAgain.", "R2")},
        {"id": f"{STEM2}-1", "image": f"x/{STEM2}.pt", "conversations": "oops"},
    ]
    records, problems = read_slide_qa(_write_list(tmp_path / "1_Report_test.json", recs), fmt="wsi-bench")
    assert [r.is_report for r in records] == [True, True] and records[0].task == "1_Report"
    assert {r.key for r in records} == {(str(tmp_path / "1_Report_test.json"), 0), (str(tmp_path / "1_Report_test.json"), 1)}
    assert [(p.line, p.skipped) for p in problems] == [(4, True), (3, False)]
    assert "duplicate id" in problems[1].reason and "no 'conversations'" in problems[0].reason
    tf = [{"id": f"{STEM}-1", "image": f"a/{STEM}.pt", "conversations": _conv("<image>\nWill it recur?", "Yes.")}]
    (r,), _ = read_slide_qa(_write_list(tmp_path / "Prognosis_TF_question_test.json", tf))
    assert r.answer_label == "Yes" and r.options is None


def test_hwsi_jsonl(tmp_path: Path) -> None:
    rows = [
        {"question_id": f"{STEM}_q1", "question": "<Image>Describe the morphology.", "T-answer": "Nests.",
         "metadata": "Morphology"},
        {"question_id": "q2", "question": "Report?", "T-answer": "Full report.", "metadata": "Report", "slide_id": STEM2},
        {"question_id": "q3", "question": "No answer", "metadata": "Caption"},
        {"id": "c4", "image": f"feats/{STEM2}.pt",
         "conversations": [{"from": "assistant", "value": "Yes"}, {"from": "user", "value": "<image>\nTumour?"}]},
    ]
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows[:3]) + "\n{not json\n" + json.dumps(rows[3]) + "\n")
    records, problems = read_slide_qa(path)
    assert [r.line for r in records] == [1, 2, 5]
    a, b, c = records
    assert a.question == "Describe the morphology." and a.task == "Morphology" and a.slide_match == "contains"
    assert b.is_report and b.slide_id == STEM2 and b.slide_match == "stem"
    assert c.question == "Tumour?" and c.answer_label == "Yes"
    assert [str(p).split(": ", 1)[0] for p in problems] == [f"{path}:3", f"{path}:4"]
    assert "missing T-answer" in problems[0].reason and "not valid JSON" in problems[1].reason
    # longest known id contained in question_id
    slides = {"TCGA-AA-0001": tmp_path / "short.svs", STEM: tmp_path / "long.svs"}
    assert resolve_slide(a, slides) == tmp_path / "long.svs"
    assert resolve_slide(c, {STEM2.lower(): tmp_path / "c.svs"}) == tmp_path / "c.svs"
    # a single object is accepted too
    one = tmp_path / "one.json"
    one.write_text(json.dumps(rows[1], indent=2))
    assert len(read_slide_qa(one, fmt="hwsi-jsonl")[0]) == 1


def test_slideinstruction(tmp_path: Path) -> None:
    recs = [
        {"id": "train::0", "image": ["./BLCA/TCGA-AA-0001-01Z-00-DX1.csv"],
         "conversations": _conv("Describe this slide.\n<image>", "Urothelial carcinoma. ")},
        {"id": 1, "image": "TCGA-BB-0002-01Z-00-DX1.csv",
         "conversations": _conv("Which grade? A) low B) high\n<image>", "B) high")},
        {"id": "train::2", "image": [], "conversations": _conv("Q\n<image>", "A")},
        [1, 2],
    ]
    path = _write_list(tmp_path / "SlideInstruct_train_stage1_caption.json", recs)
    records, problems = read_slide_qa(path)
    a, b = records
    assert (a.slide_id, a.tumor, a.answer, a.question, a.task, a.is_report, a.slide_match) == (
        "TCGA-AA-0001-01Z-00-DX1", "BLCA", "Urothelial carcinoma.", "Describe this slide.", "caption", True, "barcode")
    assert b.record_id == "1" and b.tumor is None and b.options == ["low", "high"] and b.answer_label == "B"
    assert [(p.line, p.reason) for p in problems] == [
        (4, "no 'image' feature file to name the slide"), (5, "expected a JSON object, got list")]
    slides = {STEM: tmp_path / "full.svs", STEM2: tmp_path / "other.svs"}
    assert resolve_slide(a, slides) == tmp_path / "full.svs"


SLIDEBENCH_TCGA = """ID,Slide,Tumor,Broad Category,Narrow Category,Question,A,B,C,D,Answer
0,TCGA-AA-0001-01Z-00-DX1,BRCA,Diagnosis,Grading,What grade?,G1,G2,G3,G4,C
1,TCGA-AA-0001-01Z-00-DX1,BRCA,Microscopy,Tumor Characteristics,"Is ""necrosis""
present?",Yes,No,,,A
2,TCGA-BB-0002-01Z-00-DX1,LUAD,Clinical,Risk Factors,Which?,x,,z,,A
3,TCGA-BB-0002-01Z-00-DX1,LUAD,Clinical,Risk Factors,Which?,x,y,,,E
4,,LUAD,Clinical,Risk Factors,Which?,x,y,,,A
"""


def test_slidebench_tcga_and_bcnb(tmp_path: Path) -> None:
    path = tmp_path / "SlideBench-VQA-TCGA.csv"
    path.write_text(SLIDEBENCH_TCGA)
    records, problems = read_slide_qa(path)
    a, b = records
    assert (a.task, a.options, a.answer_label, a.answer_text, a.tumor) == (
        "Diagnosis - Grading", ["G1", "G2", "G3", "G4"], "C", "G3", "BRCA")
    assert a.image == "TCGA_patch_feat/BRCA/TCGA-AA-0001-01Z-00-DX1.csv" and a.line == 2
    assert b.options == ["Yes", "No"] and b.question == 'Is "necrosis" present?' and b.line == 4
    assert [(p.line, p.reason) for p in problems] == [
        (5, "an empty option before a filled one"),
        (6, "answer 'E' names none of the 2 options"),
        (7, "empty Slide"),
    ]
    assert a.prompt(".") == "What grade?\nA. G1\nB. G2\nC. G3\nD. G4"
    bcnb = tmp_path / "SlideBench-VQA-BCNB.csv"
    bcnb.write_text("ID,Slide,Task,Question,A,B,C,D,Answer\n0,17,ER,ER status?,positive,negative,,,B\n")
    (r,), probs = read_slide_qa(bcnb)
    assert (r.slide_id, r.task, r.slide_match, r.answer_text, r.image) == ("17", "ER", "patient", "negative", "17.csv")
    assert resolve_slide(r, {"17": tmp_path / "17.csv", "170": tmp_path / "170.csv"}) == tmp_path / "17.csv"
    assert not probs


def test_tc_ssa_conversion(tmp_path: Path) -> None:
    path = _write_list(tmp_path / "slidebench_test.json", [
        {"slide_id": "TCGA-AA-0001-01Z-00-DX1", "question": "Grade?", "choices": ["A) G1", "B) G2"], "answer": "B",
         "category": "Diagnosis - Grading", "features_path": "wrong"},
    ])
    (r,), _ = read_slide_qa(path)
    assert r.options == ["G1", "G2"] and r.task == "Diagnosis - Grading" and r.slide_match == "barcode"


def test_wsi_vqa(tmp_path: Path) -> None:
    recs = [
        {"Id": "TCGA-AA-0001", "Question": "What is the grade?", "Choice": ["G1", "G2.", "G3"], "Answer": "G2"},
        {"Id": "TCGA-AA-0001", "Question": "what is the tumor_size?", "Answer": "3 cm"},
        {"Id": "TCGA-BB-0002", "Question": "Laterality?", "Choice": ["left", "right"], "Answer": "both"},
        {"Id": "TCGA-BB-0002", "Question": "Margin?", "Choice": ["Clear", "Involved"], "Answer": "Involved"},
        {"Question": "no id", "Answer": "x"},
    ]
    path = _write_list(tmp_path / "WsiVQA_test.json", recs)
    records, problems = read_slide_qa(path)
    a, b, d = records
    assert (a.answer_label, a.answer_text, a.slide_match) == ("B", "G2.", "case")
    assert b.options is None and b.answer_label is None and d.answer_label == "B"
    assert [(p.line, p.skipped) for p in problems] == [(2, False), (4, True), (6, True)]
    assert "only after normalisation" in problems[0].reason and "none of the 2 choices" in problems[1].reason
    slides = {f"TCGA-AA-0001-01Z-00-DX2.{UUID}": Path("dx2.svs"), STEM: Path("dx1.svs")}
    assert resolve_slide(a, slides) == Path("dx1.svs")


def test_option_splitting_rules() -> None:
    assert split_inline_options("Type A. cells are seen. Grade?")[1] is None
    stem, opts, delim = split_inline_options("Subtype Luminal A) or B? A) yes B) no")
    assert stem == "Subtype Luminal A) or B?" and opts == ["yes", "no"] and delim == ")"


def test_roundtrip_and_exclusion(tmp_path: Path) -> None:
    recs = [
        SlideQARecord(slide_id=STEM, question="Q?", answer="A", options=["x", "y"], answer_label="A", task="t",
                      source="s.json", line=3, index=1, meta={"k": 1}),
        SlideQARecord(slide_id="TCGA-BB-0002-01Z-00-DX1", question="Open?", answer="text", slide_match="barcode"),
    ]
    path = write_slide_qa_jsonl(recs, tmp_path / "out" / "qa.jsonl")
    back, problems = read_slide_qa(path)
    assert back == recs and not problems
    assert exclude_slides(recs, [SlideQARecord(slide_id=STEM2, question="q", answer="a")]) == [recs[0]]


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_slide_qa(tmp_path / "missing.json")
    p = tmp_path / "x.json"
    p.write_text('[{"foo": 1}]')
    with pytest.raises(ValueError, match="cannot tell"):
        read_slide_qa(p)
    with pytest.raises(ValueError, match="unknown slide-QA format"):
        read_slide_qa(p, fmt="nope")  # type: ignore[arg-type]
    broken = tmp_path / "Grading_test.json"
    broken.write_text('[\n{"id": "a-1", "image": "a.pt", "conversations": [{"from": "human", "value": "Q"}, '
                      '{"from": "gpt", "value": "A"}]},\n{"id": \n')
    records, problems = read_slide_qa(broken, fmt="wsi-bench")
    assert len(records) == 1 and problems[0].line == 3 and "not valid JSON" in problems[0].reason
