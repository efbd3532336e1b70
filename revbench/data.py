"""Deterministic token streams at fixed shapes (batch x seq), so memory figures are comparable across runs."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import torch

from revbench.workload import Workload, default_text_path

BYTE_VOCAB = 256


@functools.lru_cache(maxsize=4)
def read_tokenized(tokenizer: str, path: str) -> torch.Tensor:
    """The whole text file through a named tokenizer (see Workload.tokenizer), tokenised once per process."""
    from transformers import AutoTokenizer

    from revbench.pretrained import load_tokenizer, tokenize_file

    if tokenizer == "smollm2":
        loaded = load_tokenizer()
    elif tokenizer.endswith(".gguf"):
        file = Path(tokenizer)
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer GGUF file {tokenizer!r} does not exist")
        loaded = load_tokenizer(file)
    elif Path(tokenizer).is_dir():
        loaded = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    else:
        raise ValueError(f"unknown tokenizer {tokenizer!r}: give 'smollm2', a .gguf file or a local Hugging Face "
                         f"tokenizer directory")
    return tokenize_file(loaded, path)


def read_byte_tokens(path: str | Path) -> torch.Tensor:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {str(path)!r} does not exist")
    data = path.read_bytes()
    if len(data) < 2:
        raise ValueError(f"text file {str(path)!r} is too short to train on")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


class TokenStream:
    """Yields `input_ids` batches of shape (batch, seq); labels are the same ids (HF shifts them)."""

    def __init__(self, workload: Workload, vocab_size: int, split: str = "train") -> None:
        if split not in ("train", "heldout"):
            raise ValueError(f"unknown split {split!r}; choose 'train' or 'heldout'")
        self.workload = workload
        self.vocab_size = vocab_size
        self.split = split
        self._tokens: torch.Tensor | None = None
        if workload.data == "text":
            path = workload.text_path or default_text_path()
            if workload.tokenizer is not None:
                tokens = read_tokenized(workload.tokenizer, str(path))
                if int(tokens.max()) >= vocab_size:
                    raise ValueError(f"tokenizer {workload.tokenizer!r} gives ids up to {int(tokens.max())}, beyond "
                                     f"the model's vocabulary of {vocab_size}")
            elif vocab_size < BYTE_VOCAB:
                raise ValueError(f"byte-level text needs a vocabulary of at least {BYTE_VOCAB}, got {vocab_size}")
            else:
                tokens = read_byte_tokens(path)
            cut = int(len(tokens) * (1.0 - workload.heldout_fraction))
            self._tokens = tokens[:cut] if split == "train" else tokens[cut:]
            if len(self._tokens) <= workload.seq:
                raise ValueError(f"the {split} split has {len(self._tokens)} tokens, fewer than seq={workload.seq}")

    def batch(self, step: int) -> torch.Tensor:
        """The batch for a given step: the same step always gives the same tokens."""
        b, s = self.workload.batch, self.workload.seq
        if self._tokens is None:
            offset = 0 if self.split == "train" else 1_000_003
            gen = torch.Generator().manual_seed(self.workload.seed * 1_000_033 + offset + step)
            return torch.randint(0, self.vocab_size, (b, s), generator=gen)
        windows = (len(self._tokens) - 1) // s
        starts = [((step * b + i) % windows) * s for i in range(b)]
        return torch.stack([self._tokens[start : start + s] for start in starts])

    def __iter__(self) -> Iterator[torch.Tensor]:
        step = 0
        while True:
            yield self.batch(step)
            step += 1
