"""Shifting DA and DT values by whole days, keeping the precision they were given in.

A whole-day shift keeps every interval between one patient's events exact and leaves the
time of day alone, which is what the Modified Dates option (PS3.15 E.3.6) asks for.
Values that do not parse as dates are returned as ``None``: the caller empties them,
because an unparseable value cannot be shown to carry no date.
"""

from __future__ import annotations

import datetime as dt
import re

DUMMY_DA = "19000101"
DUMMY_DT = "19000101000000"
DUMMY_TM = "000000"

_DA = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})")  # also the old ACR-NEMA YYYY.MM.DD form
_DT = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?([+-]\d{4})?")


def shift_da(value: str, days: int) -> str | None:
    """``YYYYMMDD`` moved by ``days``; None when ``value`` is not a date."""
    m = _DA.fullmatch(value.strip())
    if m is None:
        return None
    try:
        day = dt.date(int(m[1]), int(m[2]), int(m[3])) + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    return day.strftime("%Y%m%d") if day.year >= 1000 else None


def shift_dt(value: str, days: int) -> str | None:
    """A DT moved by ``days`` at its own precision (YYYY, YYYYMM or YYYYMMDD...).

    A missing month or day counts as the first; the UTC offset suffix is dropped, since a
    time zone narrows down where the patient was.
    """
    m = _DT.fullmatch(value.strip())
    if m is None:
        return None
    year, month, day, clock = m[1], m[2], m[3], m[4] or ""
    if day is None and clock:
        return None  # hours without a day is not a DT
    try:
        moved = dt.date(int(year), int(month or 1), int(day or 1)) + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    if moved.year < 1000:
        return None
    digits = moved.strftime("%Y%m%d")[: 4 + 2 * (month is not None) + 2 * (day is not None)]
    return digits + clock
