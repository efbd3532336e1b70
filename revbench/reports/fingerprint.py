"""What an estimated section's cached figures depend on, and the budget the paper-scale sections draw against."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from revbench.units import BINARY

# The vendors' "80 GB" is near 80 GiB (nvidia-smi shows 81,559 MiB on an H100/H800 80GB). The CUDA context,
# kernel workspaces and fragmentation take a GiB or two of it, which tensor bytes do not include.
BUDGET = 80 * BINARY["GiB"]


def source_fingerprint(point: Any) -> dict[str, Any]:
    """The points (a dataclass), revbench's source outside the reports and the library versions."""
    import revbench

    source = hashlib.sha256()
    for path in sorted(Path(revbench.__file__).parent.rglob("*.py")):
        if path.parent.name != "reports":
            source.update(path.read_bytes())
    versions = {name: importlib.metadata.version(name) for name in ("torch", "transformers", "deepspeed", "peft")}
    return json.loads(json.dumps({"point": point.__dict__, "source": source.hexdigest(), **versions}))


def cached(point: Any, cache: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The figures in `cache` where they were computed for this point, source and versions; else `compute()`'s,
    stamped with the fingerprint and the seconds they took, and written to `cache`."""
    fingerprint = source_fingerprint(point)
    figures = json.loads(cache.read_text()) if cache.is_file() else {}
    if figures.get("fingerprint") == fingerprint:
        return figures
    start = time.perf_counter()
    figures = compute()
    figures = {"fingerprint": fingerprint, "seconds": round(time.perf_counter() - start, 1), **figures}
    cache.write_text(json.dumps(figures, indent=1))
    return figures
