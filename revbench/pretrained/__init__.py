"""Real pretrained weights offline: SmolLM2-135M from its GGUF file, its tokenizer, and MoE upcycling."""

from revbench.pretrained.gguf import (
    ENV_VAR,
    GGUF_NAME,
    GGUFNotFoundError,
    gguf_available,
    load_dense,
    load_tokenizer,
    locate_gguf,
)
from revbench.pretrained.text import TokenizedStream, tokenize_file
from revbench.pretrained.upcycle import UPCYCLE_FAMILIES, UpcycleSpec, keep_layers, moe_config, upcycle

__all__ = [
    "ENV_VAR", "GGUF_NAME", "UPCYCLE_FAMILIES", "GGUFNotFoundError", "TokenizedStream", "UpcycleSpec",
    "gguf_available", "keep_layers", "load_dense", "load_tokenizer", "locate_gguf", "moe_config", "tokenize_file",
    "upcycle",
]
