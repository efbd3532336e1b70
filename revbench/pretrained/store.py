"""The upcycled SmolLM2 MoE as a local safetensors checkpoint, built once and reused by every method.

Methods load it through `ModelSpec(path=...)`, like any Hugging Face checkpoint. The directory name is a hash
of the GGUF file (name and size) and the upcycle spec; `upcycle.json` beside the weights records both and is
written last, so a directory without it is an unfinished build."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from revbench.pretrained.upcycle import UpcycleSpec

CACHE_ENV = "REVBENCH_CACHE"
PROVENANCE = "upcycle.json"


def cache_dir() -> Path:
    """Where built checkpoints go: $REVBENCH_CACHE, else ~/.cache/revbench."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "revbench")


def provenance(gguf: Path, spec: UpcycleSpec) -> dict[str, Any]:
    return {"source": gguf.name, "source_bytes": gguf.stat().st_size, "upcycle": spec.to_dict()}


def checkpoint_path(gguf: Path, spec: UpcycleSpec, root: str | Path | None = None) -> Path:
    key = hashlib.sha256(json.dumps(provenance(gguf, spec), sort_keys=True).encode()).hexdigest()[:12]
    return Path(root or cache_dir() / "upcycled") / f"smollm2-{spec.family}-{key}"


def is_built(path: Path) -> bool:
    return (path / PROVENANCE).is_file()


def save_upcycled(model: PreTrainedModel, path: Path, info: dict[str, Any]) -> Path:
    """Write the checkpoint and its provenance `info` through a temporary sibling directory, so a killed
    build never looks complete."""
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    (partial / PROVENANCE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)
    return path
