"""Read the first sheet of an .xlsx file (SICAPv2 ships its partitions as Excel) without openpyxl.

An .xlsx file is a zip of XML parts; a table of strings and numbers needs only the shared
strings and the first worksheet. Formulas, dates and styles are not interpreted (cached values
are returned as text).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

_NS = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_COL = re.compile(r"([A-Z]+)")


def _column(ref: str) -> int:
    letters = _COL.match(ref)
    n = 0
    for ch in letters.group(1) if letters else "A":
        n = n * 26 + ord(ch) - 64
    return n - 1


def _text(el: ET.Element) -> str:
    return "".join(t.text or "" for t in el.iter(f"{_NS}t"))


def read_xlsx(path: str | Path) -> list[dict[str, str]]:
    """Rows of the first worksheet as dicts keyed by the header row (all values as strings)."""
    path = Path(path)
    try:
        z = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError(f"{path}: not an .xlsx file (not a zip archive)") from None
    with z:
        names = z.namelist()
        shared = []
        if "xl/sharedStrings.xml" in names:
            root = ET.fromstring(z.read("xl/sharedStrings.xml"))
            shared = [_text(si) for si in root.iter(f"{_NS}si")]
        sheets = sorted(n for n in names if re.fullmatch(r"xl/worksheets/sheet\d+\.xml", n))
        if not sheets:
            raise ValueError(f"{path}: no worksheet in the workbook")
        sheet = "xl/worksheets/sheet1.xml" if "xl/worksheets/sheet1.xml" in names else sheets[0]
        root = ET.fromstring(z.read(sheet))
    table: list[list[str]] = []
    for row in root.iter(f"{_NS}row"):
        cells: dict[int, str] = {}
        for i, c in enumerate(row.iter(f"{_NS}c")):
            col = _column(c.get("r", "")) if c.get("r") else i
            kind = c.get("t")
            v = c.find(f"{_NS}v")
            if kind == "s" and v is not None:
                cells[col] = shared[int(v.text or 0)]
            elif kind == "inlineStr":
                is_ = c.find(f"{_NS}is")
                cells[col] = _text(is_) if is_ is not None else ""
            else:
                cells[col] = v.text or "" if v is not None else ""
        width = max(cells) + 1 if cells else 0
        table.append([cells.get(j, "") for j in range(width)])
    if not table:
        return []
    header = [h.strip() for h in table[0]]
    return [{h: (r[j] if j < len(r) else "") for j, h in enumerate(header) if h} for r in table[1:] if any(r)]
