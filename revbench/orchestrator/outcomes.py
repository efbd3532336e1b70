"""The files a run's worker leaves for its parent: one outcome per rank, each written whole or not at all."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Whole or nothing: the parent never reads a half-written outcome."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def rank_result(result: Path, rank: int, ranks: int) -> Path:
    """Where a rank writes its outcome: the result path itself for a single process, else one file per rank,
    which the parent merges into one record."""
    return result if ranks == 1 else result.with_name(f"{result.stem}.rank{rank}{result.suffix}")
