"""Low-level helpers for the slide-QA readers (``FORMATS.md`` §3): loading rows with their line
numbers, stripping ``<image>``, splitting inline options, matching answers to options.

Kept apart from :mod:`pathmllm.data.slide_qa` so the readers stay short; nothing here knows
which dataset a row came from.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LETTERS = "ABCD"

# U+2018/2019/201A/201B, U+201C/201D, dashes, non-breaking space -> ASCII (§3.7 kind 5)
_PUNCT = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
        "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-", "\u2212": "-", "\u00a0": " ",
    }
)
_IMAGE_TOKEN = re.compile(r"\s*<image>\s*", re.IGNORECASE)
_TRAILING_PUNCT = re.compile(r"[\s.,;:!?]+$")


def normalize_text(text: str) -> str:
    """NFKC, curly quotes and dashes to ASCII, collapsed whitespace, stripped (§3.7 kinds 5, 10)."""
    text = unicodedata.normalize("NFKC", text).translate(_PUNCT)
    return " ".join(text.split())


def answer_key(text: str) -> str:
    """The comparison key of an option or answer: normalised, casefolded, trailing punctuation dropped (§3.5)."""
    return _TRAILING_PUNCT.sub("", normalize_text(text).casefold())


def strip_image_token(text: str) -> str:
    """Remove ``<image>`` / ``<Image>`` wherever it sits (start, end, middle) and strip."""
    return _IMAGE_TOKEN.sub(" ", text).strip()


def split_inline_options(text: str) -> tuple[str, list[str] | None, str | None]:
    """Split ``question A) x B) y [C) z [D) w]]`` into the stem and the options.

    Only the ordered ``A`` ... ``D`` sequence counts, so a stem holding ``"subtype A."`` is left
    whole (§3.7 kind 4). The ``)`` delimiter is tried first, then ``.`` (kind 2); markers follow
    whitespace or the start. The last ``A`` marker that a ``B`` marker follows starts the options.
    Returns ``(stem, options or None, delimiter or None)``.
    """
    for delim in (")", "."):
        marker = re.compile(rf"(?:^|(?<=\s))([A-D]){re.escape(delim)}(?=\s|$)")
        found = [(m.group(1), m.start(), m.end()) for m in marker.finditer(text)]
        starts = [i for i, (letter, _, _) in enumerate(found) if letter == "A"]
        for ai in reversed(starts):
            seq = [found[ai]]
            for letter, s, e in found[ai + 1 :]:
                if len(seq) < 4 and letter == LETTERS[len(seq)]:
                    seq.append((letter, s, e))
            if len(seq) < 2:
                continue
            options = []
            for k, (_, _, end) in enumerate(seq):
                stop = seq[k + 1][1] if k + 1 < len(seq) else len(text)
                options.append(text[end:stop].strip())
            if any(not o for o in options):
                continue
            return text[: seq[0][1]].strip(), options, delim
    return text.strip(), None, None


def letter_of(answer: str, options: list[str]) -> str | None:
    """The option letter an answer names: a leading letter (junk after it ignored, §3.7 kind 3),
    else the option whose text matches (kind 9: the option text or the full ``A) text``), else None."""
    stripped = normalize_text(answer)
    m = re.match(r"^[(\[\s]*([A-D])(?![A-Za-z])", stripped)
    if m and LETTERS.index(m.group(1)) < len(options):
        return m.group(1)
    key = answer_key(stripped)
    for i, opt in enumerate(options):
        if answer_key(opt) == key:
            return LETTERS[i]
    # "A) text" / "A. text" as the answer
    m = re.match(r"^([A-D])[).:]\s*(.+)$", stripped)
    if m and LETTERS.index(m.group(1)) < len(options):
        return m.group(1)
    return None


def iter_rows(path: Path) -> Iterator[tuple[int, int, Any, str | None]]:
    """``(line, index, object, error)`` for each record of a JSON list, a single JSON object or JSONL.

    ``line`` is the 1-based line where the record starts; ``error`` is set (and ``object`` None)
    for a JSONL line that is not valid JSON. A JSON file that cannot be parsed at all yields one
    error row at line 1.
    """
    text = path.read_text(encoding="utf-8-sig")
    stripped = text.lstrip()
    if not stripped:
        return
    decoder = json.JSONDecoder()
    if stripped[0] == "[":
        pos = text.index("[") + 1
        index = 0
        while True:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(text):
                yield 1, index, None, "unterminated JSON list"
                return
            if text[pos] == "]":
                return
            line = text.count("\n", 0, pos) + 1
            try:
                obj, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                yield line, index, None, f"not valid JSON ({exc.msg}); the rest of the list is unreadable"
                return
            yield line, index, obj, None
            index += 1
    # a single object, or JSONL
    try:
        obj, end = decoder.raw_decode(stripped)
        if not stripped[end:].strip():
            yield text.count("\n", 0, len(text) - len(stripped)) + 1, 0, obj, None
            return
    except json.JSONDecodeError:
        pass
    index = 0
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, index, json.loads(line), None
        except json.JSONDecodeError as exc:
            yield n, index, None, f"not valid JSON ({exc.msg})"
        index += 1


def find_turn(conversations: list[Any], roles: tuple[str, ...]) -> str | None:
    """The value of the first turn whose ``from`` (or ``role``) is one of ``roles`` (§3.7 kind 1)."""
    for turn in conversations:
        if isinstance(turn, dict):
            role = str(turn.get("from", turn.get("role", ""))).casefold()
            if role in roles:
                value = turn.get("value", turn.get("content"))
                return value if isinstance(value, str) else None
    return None
