"""PS3.15 Table E.1-1 as data: one row per attribute, and a tag lookup over the rows.

The rows live in ``table_e1_1.csv`` next to this module, transcribed from the standard:
``tag`` as the standard writes it (``x`` marks a repeating-group digit), the pydicom
``keyword``, the standard's ``name``, the ``basic`` profile action code verbatim
(D, Z, X, U, or a combination such as X/Z/D and X/Z/U*), and two option columns kept
because medssl offers those options: ``modified_dates`` (C under Retain Longitudinal
Temporal Information with Modified Dates) and ``clean_descriptors`` (C under Clean
Descriptors). The "private attributes" row of the table is a rule, not a tag, and is
implemented in ``profile.py``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import cache
from importlib import resources

PROFILE_EDITION = "2024b"
"""The edition of PS3.15 whose Table E.1-1 ``table_e1_1.csv`` encodes."""

BASIC_CODES = frozenset({"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"})


@dataclass(frozen=True)
class ProfileRow:
    """One attribute of Table E.1-1."""

    tag: str  # "(0010,0010)", or "(60xx,3000)" for a repeating group
    keyword: str
    name: str
    basic: str  # Basic Profile action code, verbatim
    modified_dates: bool  # C under the Retain Longitudinal ... Modified Dates option
    clean_descriptors: bool  # C under the Clean Descriptors option

    @property
    def repeating(self) -> bool:
        return "x" in self.tag.lower()

    def matches(self, tag: int) -> bool:
        """Whether the integer ``tag`` (gggg eeee) is this row's attribute."""
        pattern = self.tag.strip("()").replace(",", "").lower()
        text = f"{tag:08x}"
        return all(p in ("x", t) for p, t in zip(pattern, text, strict=True))


@cache
def profile_rows() -> tuple[ProfileRow, ...]:
    """All rows of the table, in tag order."""
    text = resources.files(__package__).joinpath("table_e1_1.csv").read_text("utf-8")
    rows = []
    for raw in csv.DictReader(io.StringIO(text)):
        if raw["basic"] not in BASIC_CODES:
            raise ValueError(f"table_e1_1.csv: {raw['tag']} has unknown code {raw['basic']!r}")
        rows.append(
            ProfileRow(
                tag=raw["tag"],
                keyword=raw["keyword"],
                name=raw["name"],
                basic=raw["basic"],
                modified_dates=raw["modified_dates"] == "C",
                clean_descriptors=raw["clean_descriptors"] == "C",
            )
        )
    return tuple(rows)


@cache
def _exact_index() -> dict[int, ProfileRow]:
    return {
        int(r.tag.strip("()").replace(",", ""), 16): r for r in profile_rows() if not r.repeating
    }


def row_for_tag(tag: int) -> ProfileRow | None:
    """The table row governing ``tag``, or None when the table does not list it."""
    row = _exact_index().get(int(tag))
    if row is not None:
        return row
    for candidate in _repeating_rows():
        if candidate.matches(int(tag)):
            return candidate
    return None


@cache
def _repeating_rows() -> tuple[ProfileRow, ...]:
    return tuple(r for r in profile_rows() if r.repeating)
