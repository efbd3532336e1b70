import pytest
import torch

from revbench.data import TokenStream, Workload
from revbench.models import (
    PRESETS,
    TINY_PRESETS,
    CheckpointError,
    ModelSpec,
    UnsupportedArchitectureError,
    build_config,
    build_model,
    family_of,
    num_experts,
    parameter_count,
    save_pretrained,
)


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_tiny_preset_builds_and_trains_one_step(preset: str) -> None:
    model = build_model(ModelSpec(preset))
    assert 1_000_000 < parameter_count(model) < 10_000_000
    batch = TokenStream(Workload(batch=2, seq=32), model.config.vocab_size).batch(0)
    out = model(input_ids=batch, labels=batch)
    assert out.aux_loss is not None  # the router auxiliary loss is on
    out.loss.backward()
    torch.optim.AdamW(model.parameters()).step()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_seeded_builds_are_identical() -> None:
    a, b = build_model(ModelSpec("tiny-olmoe"), seed=3), build_model(ModelSpec("tiny-olmoe"), seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("layers", [2, 16])
def test_overrides(layers: int) -> None:
    spec = ModelSpec("tiny-mixtral", layers=layers, hidden=64, experts=4, top_k=1, config={"rms_norm_eps": 1e-5})
    config = build_config(spec)
    assert (config.num_hidden_layers, config.hidden_size, num_experts(config), config.num_experts_per_tok) == (
        layers, 64, 4, 1)
    assert config.rms_norm_eps == 1e-5


def test_full_size_preset_has_published_parameter_count() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        model = build_model(ModelSpec("qwen1.5-moe-a2.7b", dtype="bf16"))
    assert parameter_count(model) == 14_315_784_192  # Qwen1.5-MoE-A2.7B, as published
    assert {"qwen1.5-moe-a2.7b", "olmoe-1b-7b", "mixtral-8x7b", "qwen3-30b-a3b"} <= set(PRESETS)


def test_unknown_preset_and_dtype_are_named() -> None:
    with pytest.raises(ValueError, match=r"unknown model preset 'gpt2'.*tiny-qwen2-moe"):
        ModelSpec("gpt2")
    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        ModelSpec(dtype="int3")


def test_save_then_load_round_trip(tmp_path) -> None:
    model = build_model(ModelSpec("tiny-qwen3-moe", layers=2))
    save_pretrained(model, tmp_path)
    loaded = build_model(ModelSpec(path=str(tmp_path)))
    assert type(loaded) is type(model)
    for (name, x), (_, y) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_missing_path_is_named(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model(ModelSpec(path=str(tmp_path / "nowhere")))


def test_missing_weights_are_named(tmp_path) -> None:
    build_model(ModelSpec("tiny-olmoe", layers=2)).config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors weights \(found pytorch_model.bin"):
        build_model(ModelSpec(path=str(tmp_path)))


def test_unsupported_architecture_is_named(tmp_path) -> None:
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                vocab_size=256).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsupportedArchitectureError, match=r"'llama'.*qwen2_moe, qwen3_moe, olmoe, mixtral"):
        build_model(ModelSpec(path=str(tmp_path)))
    with pytest.raises(UnsupportedArchitectureError):
        family_of(LlamaConfig())
