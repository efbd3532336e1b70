"""Byte sizes for people and from people: the one parser and the one formatter every command uses.

Imports nothing heavy: the command line parses `--budget` with it before torch is loaded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

# Decimal units as on packaging (GB = 10^9), binary units as in memory (GiB = 2^30); a bare number is bytes.
UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50}
BINARY = {name: 2 ** (10 * i) for i, name in enumerate(("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"), 1)}
_SIZE = re.compile(r"([0-9]*\.?[0-9]+(?:e[+]?[0-9]+)?)\s*([kmgtp]i?b|b)?", re.IGNORECASE)


def parse_bytes(value: int | float | str) -> int:
    """A positive byte count from an integer or a string such as `64MiB`, `1.5 GiB`, `80GB`, `8.5e10`, `1024`.
    Raises ValueError with the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 64MiB, 80GiB, 141GB or a number of bytes, got {value!r}")
    if isinstance(value, (int, float)):
        number = value
    else:
        match = _SIZE.fullmatch(str(value).strip())
        if not match:
            raise ValueError(f"cannot read {value!r} as a size: write a number of bytes or a number with a unit "
                             "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 64MiB, 80GiB or 141GB")
        number = float(match.group(1)) * UNITS[(match.group(2) or "b").lower()]
    if not math.isfinite(number) or number < 1:
        raise ValueError(f"a size must be at least 1 byte, got {value!r}")
    return int(number)


def unit_for(values: Iterable[float | None]) -> str:
    """The binary unit in which the largest of `values` reads best: MiB below 1 GiB, then GiB, TiB, ..."""
    finite = [abs(v) for v in values if v is not None and not math.isnan(v)]
    largest = max(finite, default=0.0)
    fitting = [name for name, size in BINARY.items() if largest >= size and name != "KiB"]
    return fitting[-1] if fitting else "MiB"


def format_bytes(value: float | None, unit: str | None = None, digits: int = 2) -> str:
    """`value` bytes in `unit` (default: the unit that fits it), e.g. `1.50 GiB`; `-` for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    unit = unit or unit_for([value])
    return f"{value / BINARY[unit]:,.{digits}f} {unit}"
