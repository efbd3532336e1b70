"""Byte units for people: one unit per column (MiB or GiB), chosen from the column's largest value."""

from __future__ import annotations

import math
from collections.abc import Iterable

UNITS = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def unit_for(values: Iterable[float | None]) -> str:
    """MiB below 1 GiB, else GiB (TiB beyond): the unit in which the largest value reads best."""
    finite = [abs(v) for v in values if v is not None and not math.isnan(v)]
    largest = max(finite, default=0.0)
    if largest >= UNITS["TiB"]:
        return "TiB"
    return "GiB" if largest >= UNITS["GiB"] else "MiB"


def format_bytes(value: float | None, unit: str | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    unit = unit or unit_for([value])
    return f"{value / UNITS[unit]:,.1f} {unit}"
