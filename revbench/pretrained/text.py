"""Real text tokenised with a real tokenizer, at fixed (batch, seq) shapes, split like `revbench.data`.

`revbench.data.TokenStream` is byte-level; a pretrained model needs its own tokenizer. This stream keeps the
same rules: the whole text is tokenised once, the last `heldout_fraction` of the tokens is held out, and
step `i` always gives the same windows."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from revbench.workload import Workload, default_text_path


def tokenize_file(tokenizer: PreTrainedTokenizerBase, path: str | Path | None = None) -> torch.Tensor:
    """Every token of a UTF-8 text file, without special tokens, as a 1-D LongTensor."""
    path = Path(path) if path is not None else default_text_path()
    if not path.is_file():
        raise FileNotFoundError(f"text file {str(path)!r} does not exist")
    ids = tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise ValueError(f"text file {str(path)!r} is too short to train on")
    return torch.tensor(ids, dtype=torch.long)


class TokenizedStream:
    """`input_ids` batches (batch, seq) from pre-tokenised text; labels are the same ids (HF shifts them)."""

    def __init__(self, workload: Workload, tokens: torch.Tensor, split: str = "train") -> None:
        if split not in ("train", "heldout"):
            raise ValueError(f"unknown split {split!r}; choose 'train' or 'heldout'")
        if workload.data != "text":
            raise ValueError(f"a tokenised stream needs data='text', got {workload.data!r}")
        cut = int(len(tokens) * (1.0 - workload.heldout_fraction))
        self.workload = workload
        self.tokens = tokens[:cut] if split == "train" else tokens[cut:]
        if len(self.tokens) <= workload.seq:
            raise ValueError(f"the {split} split has {len(self.tokens)} tokens, fewer than seq={workload.seq}")
        self.windows = (len(self.tokens) - 1) // workload.seq

    def batch(self, step: int) -> torch.Tensor:
        """The batch of step `step`: consecutive windows, wrapping around the split."""
        b, s = self.workload.batch, self.workload.seq
        starts = [((step * b + i) % self.windows) * s for i in range(b)]
        return torch.stack([self.tokens[start : start + s] for start in starts])

    def spread(self, count: int) -> list[torch.Tensor]:
        """`count` batches whose windows are spread evenly over the split (for a fixed evaluation set)."""
        b, s = self.workload.batch, self.workload.seq
        total = min(count * b, self.windows)
        picks = torch.linspace(0, self.windows - 1, total).long().tolist()
        windows = [self.tokens[w * s : w * s + s] for w in picks]
        return [torch.stack(windows[i : i + b]) for i in range(0, len(windows), b)]
