"""Metrics of slide question answering (WSI-Bench style): open answers (BLEU-1..4, ROUGE-L, METEOR),
closed (multiple-choice) answers parsed into option letters, and recall@K for report->slide retrieval.

Tokenization: BLEU and METEOR use :func:`tokenize` (lower case, word tokens, punctuation dropped).
ROUGE-L is left to the ``rouge_score`` package, which tokenizes itself in much the same way
(lower case, alphanumeric tokens) and Porter-stems words.

METEOR runs without WordNet (its data cannot be downloaded here), i.e. with the exact and
Porter-stem matching stages only; see :func:`meteor`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "tokenize",
    "bleu_scores",
    "rouge_l",
    "meteor",
    "open_answer_scores",
    "closed_answer_letter",
    "closed_accuracy",
]

_TOKEN = re.compile(r"[^\W_]+(?:'[^\W\d_]+)?")
_BLEU_WEIGHTS = {
    "bleu1": (1.0, 0.0, 0.0, 0.0),
    "bleu2": (0.5, 0.5, 0.0, 0.0),
    "bleu3": (1 / 3, 1 / 3, 1 / 3, 0.0),
    "bleu4": (0.25, 0.25, 0.25, 0.25),
}


def tokenize(text: str) -> list[str]:
    """Lower-case ``text`` and split it into word tokens, dropping punctuation.

    A token is a run of letters/digits, optionally with an apostrophe suffix (``"tumor's"``);
    for ASCII text this is ``[a-z0-9]+(?:'[a-z]+)?`` on the lower-cased text. Curly apostrophes
    count as ``'``. BLEU and METEOR here both use this tokenizer.
    """
    return _TOKEN.findall(text.lower().replace("\u2019", "'"))


def _check_pairs(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if len(references) == 0:
        raise ValueError("no references/hypotheses given")
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")


def bleu_scores(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Corpus BLEU-1..4 (``bleu1``..``bleu4``), one reference per hypothesis.

    ``nltk.translate.bleu_score.corpus_bleu`` with cumulative uniform weights and
    ``SmoothingFunction().method1``, on :func:`tokenize`-d texts.
    """
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

    _check_pairs(references, hypotheses)
    refs = [[tokenize(r)] for r in references]
    hyps = [tokenize(h) for h in hypotheses]
    smooth = SmoothingFunction().method1
    return {k: float(corpus_bleu(refs, hyps, weights=w, smoothing_function=smooth))
            for k, w in _BLEU_WEIGHTS.items()}


def rouge_l(references: list[str], hypotheses: list[str]) -> float:
    """Mean ROUGE-L F1 over (reference, hypothesis) pairs (``rouge_score``, Porter stemming).

    Texts are passed as given; ``rouge_score`` lower-cases and tokenizes them itself.
    """
    from rouge_score import rouge_scorer

    _check_pairs(references, hypotheses)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(np.mean([scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(references, hypotheses)]))


class _NoSynonyms:
    """Stands in for nltk's WordNet reader: no word has synsets, so no corpus is ever loaded."""

    def synsets(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []

    def morphy(self, *args: Any, **kwargs: Any) -> None:
        return None

    def lemmas(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []


def meteor(references: list[str], hypotheses: list[str]) -> float:
    """Mean sentence METEOR (``nltk.translate.meteor_score``) over pairs, on :func:`tokenize`-d texts.

    WordNet is NOT used: its data (``nltk_data``) cannot be downloaded here and is not on PyPI,
    so nltk gets a stand-in reader without synonyms and METEOR matches words by the exact and
    Porter-stem stages only. Scores are therefore a little lower (never higher) than METEOR with
    WordNet synonyms, and are comparable only with other scores computed this way. Identical
    texts score just under 1 (nltk's fragmentation penalty), texts sharing no stem score 0.
    """
    from nltk.translate.meteor_score import meteor_score

    _check_pairs(references, hypotheses)
    wn = _NoSynonyms()
    scores = [meteor_score([tokenize(r)], tokenize(h), wordnet=wn)  # type: ignore[arg-type]
              for r, h in zip(references, hypotheses)]
    return float(np.mean(scores))


def open_answer_scores(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L (``rougeL``) and METEOR (``meteor``) of open answers together."""
    out = bleu_scores(references, hypotheses)
    out["rougeL"] = rouge_l(references, hypotheses)
    out["meteor"] = meteor(references, hypotheses)
    return out


_PAREN_LETTER = re.compile(r"^\s*\(([A-Za-z])\)")
_BARE_LETTER = re.compile(r"^\s*([A-Z])(?:[.):,]|\s*$)")
_ANSWER_LETTER = re.compile(
    r"^\s*(?i:(?:the\s+)?(?:correct\s+|final\s+)?(?:answer|option|choice)(?:\s+is)?)\s*[:\-]?\s*"
    r"(?:\(([A-Za-z])\)|([A-Z])(?=$|[\s.):,])|([a-z])(?=$|[.):,]))")


def closed_answer_letter(text: str, options: list[str]) -> str | None:
    """The option letter (``"A"``, ``"B"``, ...) a model's answer to a multiple-choice question picks.

    1. A leading letter: ``A``, ``A)``, ``A.``, ``A:``, ``(A)``, ``Answer: B``, ``The answer is (c)``.
       A bare letter must be upper case and followed by punctuation or the end (so ``"A tumor ..."``
       is not read as option A); the letter must name one of the options.
    2. Else the option whose text appears in the answer (case-insensitive, as whole words), if
       exactly one does; an option contained in a longer matching option (``carcinoma`` inside
       ``squamous cell carcinoma``) does not count. Two different options: None (``"benign, not
       malignant"`` is ambiguous to a parser).
    3. Else None.
    """
    n = len(options)
    for pattern in (_PAREN_LETTER, _BARE_LETTER, _ANSWER_LETTER):
        m = pattern.match(text)
        if m:
            letter = next(g for g in m.groups() if g).upper()
            if ord(letter) - ord("A") < n:
                return letter
    lowered = " ".join(text.lower().split())
    norm = [" ".join(opt.lower().split()) for opt in options]
    found = [i for i, o in enumerate(norm) if o and re.search(r"(?<!\w)" + re.escape(o) + r"(?!\w)", lowered)]
    found = [i for i in found if not any(j != i and norm[i] != norm[j] and norm[i] in norm[j] for j in found)]
    return chr(ord("A") + found[0]) if len(found) == 1 else None


def closed_accuracy(predictions: list[str], answers: list[str], options: list[list[str]]) -> float:
    """Fraction of answers whose parsed letter (:func:`closed_answer_letter`) equals the answer letter."""
    if len(predictions) == 0:
        raise ValueError("no predictions given")
    if not len(predictions) == len(answers) == len(options):
        raise ValueError(f"{len(predictions)} predictions, {len(answers)} answers, {len(options)} option lists")
    hits = [closed_answer_letter(p, o) == a.strip().upper() for p, a, o in zip(predictions, answers, options)]
    return float(np.mean(hits))
