"""Slide-QA text metrics against hand computations, nltk itself, and a small LCS program."""

from __future__ import annotations

import math

import nltk
import numpy as np
import pytest
from nltk.stem.porter import PorterStemmer
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from pathmllm.bench.text_metrics import (
    bleu_scores,
    closed_accuracy,
    closed_answer_letter,
    meteor,
    open_answer_scores,
    rouge_l,
    tokenize,
)


def test_tokenize() -> None:
    assert tokenize("The Tumor's margin, 5-mm!  NOS.") == ["the", "tumor's", "margin", "5", "mm", "nos"]
    assert tokenize("tumor\u2019s") == ["tumor's"]
    assert tokenize(" ,.; ") == []


# --- BLEU -------------------------------------------------------------------------------------

def test_bleu_identical_is_one() -> None:
    text = "The tissue shows invasive ductal carcinoma with necrosis."
    assert bleu_scores([text], [text]) == pytest.approx({f"bleu{n}": 1.0 for n in range(1, 5)})


def test_bleu_hand_computed_precision_and_brevity_penalty() -> None:
    ref = "the cell shows a large nucleus here"       # 7 tokens
    hyp = "The cell shows big nucleus."                # 5 tokens, 4 in ref; bigrams: 2 of 4 in ref
    bp = math.exp(1 - 7 / 5)
    s = bleu_scores([ref], [hyp])
    assert s["bleu1"] == pytest.approx(bp * 4 / 5)
    assert s["bleu2"] == pytest.approx(bp * math.sqrt(4 / 5 * 2 / 4))


def test_bleu_is_corpus_level_not_mean_of_sentences() -> None:
    # counts pooled: unigram precision (4 + 1) / (4 + 2), hyp length 6 = ref length 6 -> no penalty
    s = bleu_scores(["a b c d", "x y"], ["a b c d", "x z"])
    assert s["bleu1"] == pytest.approx(5 / 6)


def test_bleu1_agrees_with_nltk_sentence_bleu() -> None:
    ref = "Sections show a poorly differentiated adenocarcinoma infiltrating the muscularis propria."
    hyp = "The sections show adenocarcinoma, poorly differentiated, in the muscularis."
    expected = sentence_bleu([tokenize(ref)], tokenize(hyp), weights=(1, 0, 0, 0),
                             smoothing_function=SmoothingFunction().method1)  # no effect on BLEU-1
    assert bleu_scores([ref], [hyp])["bleu1"] == pytest.approx(expected)


# --- ROUGE-L ----------------------------------------------------------------------------------

def lcs_length(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_rouge_l_equals_lcs_f1() -> None:
    pairs = [("the cat sat on the mat", "The dog sat on a red mat."),
             ("a big red cat ran", "red cat a big ran")]
    stem = PorterStemmer()
    expected = []
    for ref, hyp in pairs:
        r, h = ref.lower().split(), hyp.lower().replace(".", "").split()
        assert all(stem.stem(w) == w for w in r + h)  # no stemming effects in these words
        lcs = lcs_length(r, h)
        p, rec = lcs / len(h), lcs / len(r)
        expected.append(2 * p * rec / (p + rec))
    assert rouge_l([p[0] for p in pairs], [p[1] for p in pairs]) == pytest.approx(np.mean(expected))
    assert rouge_l(["abc def"], ["ghi"]) == 0.0


# --- METEOR -----------------------------------------------------------------------------------

@pytest.fixture()
def no_wordnet(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No nltk data anywhere, and nltk's default WordNet reader fails loudly if touched."""
    import nltk.translate.meteor_score as ms

    monkeypatch.setenv("NLTK_DATA", str(tmp_path))
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(LookupError):
        nltk.data.find("corpora/wordnet")

    class Exploding:
        def __getattr__(self, name: str) -> None:
            raise LookupError(f"wordnet.{name} used")

    monkeypatch.setattr(ms, "wordnet", Exploding())


def test_meteor_identical_close_to_one(no_wordnet: None) -> None:
    text = "the biopsy shows nests of atypical cells with prominent nucleoli and mitoses"
    n = len(tokenize(text))
    # one chunk of n matches: penalty 0.5 * (1 / n) ** 3, fmean 1
    assert meteor([text], [text]) == pytest.approx(1 - 0.5 / n**3)
    assert meteor([text], [text]) > 0.99


def test_meteor_no_overlap_is_zero(no_wordnet: None) -> None:
    assert meteor(["benign stroma only"], ["malignant epithelium present"]) == 0.0


def test_meteor_stem_match_without_wordnet(no_wordnet: None) -> None:
    # one stem match: P = R = 1, one chunk per match -> penalty 0.5
    assert meteor(["tumor"], ["tumors"]) == pytest.approx(0.5)
    # no synonym stage: WordNet synonyms do not match
    assert meteor(["large"], ["big"]) == 0.0


def test_meteor_is_mean_over_pairs(no_wordnet: None) -> None:
    assert meteor(["tumor", "a b"], ["tumors", "c d"]) == pytest.approx(0.25)


def test_open_answer_scores_keys(no_wordnet: None) -> None:
    refs, hyps = ["the tumor is a carcinoma"], ["the tumors are carcinoma"]
    s = open_answer_scores(refs, hyps)
    assert set(s) == {"bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "meteor"}
    assert s["rougeL"] == rouge_l(refs, hyps) and s["meteor"] == meteor(refs, hyps)
    assert s["bleu4"] == bleu_scores(refs, hyps)["bleu4"]


# --- closed answers ---------------------------------------------------------------------------

OPTS = ["benign", "malignant", "squamous cell carcinoma", "carcinoma"]


@pytest.mark.parametrize("text, letter", [
    ("A", "A"), ("B)", "B"), ("C.", "C"), ("(D)", "D"), ("(b) malignant", "B"), ("  A: benign", "A"),
    ("Answer: B", "B"), ("answer: c", "C"), ("The answer is (D).", "D"), ("Answer: B because of atypia", "B"),
])
def test_closed_letter_forms(text: str, letter: str) -> None:
    assert closed_answer_letter(text, OPTS) == letter


@pytest.mark.parametrize("text, letter", [
    ("It is MALIGNANT.", "B"),
    ("This is a squamous cell carcinoma", "C"),      # longest matching option wins over "carcinoma"
    ("carcinoma, not otherwise specified", "D"),
    ("A tumor that looks malignant", "B"),           # "A tumor" is not the letter A
    ("The answer is a malignant lesion", "B"),
])
def test_closed_option_text(text: str, letter: str) -> None:
    assert closed_answer_letter(text, OPTS) == letter


def test_closed_none_and_ambiguous() -> None:
    assert closed_answer_letter("I cannot tell", OPTS) is None
    assert closed_answer_letter("E.", OPTS) is None                      # no option E
    assert closed_answer_letter("either x or y", ["x", "y"]) is None     # two options tie
    assert closed_answer_letter("nonbenign", OPTS) is None               # whole words only
    assert closed_answer_letter("benign, not malignant", OPTS) is None   # two different options named


def test_closed_accuracy() -> None:
    preds = ["A", "malignant", "(C)", "no idea"]
    answers = ["a", "B", "D", "A"]
    assert closed_accuracy(preds, answers, [OPTS] * 4) == pytest.approx(2 / 4)


@pytest.mark.parametrize("fn", [bleu_scores, rouge_l, meteor, open_answer_scores])
def test_open_metrics_reject_empty_and_mismatched(fn) -> None:
    with pytest.raises(ValueError):
        fn([], [])
    with pytest.raises(ValueError):
        fn(["a"], ["a", "b"])


def test_closed_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        closed_accuracy([], [], [])
    with pytest.raises(ValueError):
        closed_accuracy(["A"], ["A", "B"], [OPTS])
