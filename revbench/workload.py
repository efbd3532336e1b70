"""The data shape every run shares: batch x seq of real text (bytes or a tokenizer's ids) or synthetic ids."""

from __future__ import annotations

import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


def default_text_path() -> Path:
    """Text that ships with every CPython: the pydoc topics (about 800 KB of English documentation)."""
    return Path(sysconfig.get_paths()["stdlib"]) / "pydoc_data" / "topics.py"


@dataclass
class Workload:
    batch: int = 2
    seq: int = 128
    data: str = "text"  # "text" (real bytes, loss can fall) or "synthetic" (uniform random ids)
    text_path: str | None = None  # default: CPython's pydoc topics
    heldout_fraction: float = 0.1  # the tail of the text kept out of training
    seed: int = 0
    # data="text" only. None: byte-level tokens. Otherwise a tokenizer: "smollm2" (the GGUF the quality suite
    # uses, see revbench.pretrained), a .gguf file, or a local Hugging Face tokenizer directory.
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        if self.data not in ("synthetic", "text"):
            raise ValueError(f"unknown data kind {self.data!r}; choose 'synthetic' or 'text'")
        if self.batch < 1 or self.seq < 2:
            raise ValueError(f"batch must be >= 1 and seq >= 2, got batch={self.batch} seq={self.seq}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if self.tokenizer is not None and self.data != "text":
            raise ValueError(f"a tokenizer ({self.tokenizer!r}) needs data='text', got data={self.data!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.seq
