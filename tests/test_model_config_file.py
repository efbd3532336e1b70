"""A model from a local Hugging Face config.json, of each supported family: estimated on fake tensors, built
with random weights, and refused with a clear error when revbench does not support its architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig

from revbench.data import Workload
from revbench.estimate import estimate_method
from revbench.methods import TrainSpec
from revbench.models import PRESETS, TINY_PRESETS, ModelSpec, UnsupportedArchitectureError, build_config, build_model
from revbench.models.families import FAMILIES


def write_config(preset: str, folder: Path) -> Path:
    """The preset's config, saved as Hugging Face saves it (config class -> save_pretrained)."""
    family = FAMILIES[PRESETS[preset].family]
    family.config_class(**PRESETS[preset].config).save_pretrained(folder)
    return folder / "config.json"


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_a_config_file_builds_the_same_model_as_its_preset(preset: str, tmp_path: Path) -> None:
    file = write_config(preset, tmp_path)
    for path in (file, tmp_path):  # the file, or the directory holding it
        spec = ModelSpec(str(path), layers=1)
        assert spec.family.name == PRESETS[preset].family
        assert build_config(spec).to_dict() == build_config(ModelSpec(preset, layers=1)).to_dict()
    model = build_model(ModelSpec(str(file), layers=1), seed=0)
    reference = build_model(ModelSpec(preset, layers=1), seed=0)
    assert model.config.num_hidden_layers == 1
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.equal(p, q), name  # same seeded random weights


def test_estimate_from_a_config_file_equals_its_preset(tmp_path: Path) -> None:
    write_config("tiny-olmoe", tmp_path)
    workload = Workload(2, 64)
    from_file = estimate_method("standard", TrainSpec(ModelSpec(str(tmp_path), layers=1), workload), "cpu")
    preset = estimate_method("standard", TrainSpec(ModelSpec("tiny-olmoe", layers=1), workload), "cpu")
    assert from_file.status == "ok" and from_file.tensor_bytes == preset.tensor_bytes


def test_unsupported_or_missing_configs_get_clear_errors(tmp_path: Path) -> None:
    LlamaConfig(hidden_size=64).save_pretrained(tmp_path / "llama")
    with pytest.raises(UnsupportedArchitectureError, match="'llama' model; revbench supports qwen2_moe, qwen3_moe"):
        ModelSpec(str(tmp_path / "llama"))
    with pytest.raises(ValueError, match=r"has no config\.json"):
        ModelSpec(str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        ModelSpec(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ValueError, match="names no model_type"):
        ModelSpec(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match=r"unknown model preset 'nope'.*config\.json"):
        ModelSpec("nope")


def test_estimate_command_takes_a_config_file(tmp_path: Path, capsys) -> None:
    from revbench.cli import main

    write_config("tiny-mixtral", tmp_path)
    assert main(["estimate", "--model", str(tmp_path), "--layers", "1", "--method", "standard,zero3-offload",
                 "--batch", "1", "--seq", "16", "--device", "cpu", "--json", "--jobs", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["model"], r["layers"], r["status"]) for r in rows] == [(str(tmp_path), 1, "ok")] * 2
    assert rows[1]["host_peak_bytes"] > 0
