import json
from dataclasses import replace

import pytest
import torch

from revbench.cli import main
from revbench.data import TokenStream, Workload
from revbench.estimate import estimate_method, fit_method, parse_bytes, search_largest
from revbench.harness import run_method
from revbench.measure.profiler_bytes import measure_peak_bytes
from revbench.methods import OptimizerSpec, TrainSpec, create_method
from revbench.models import ModelSpec

# What the dispatch-level tracker cannot see and the profiler can (see revbench/estimate/fake_step.py):
# Python scalars wrapped into 0-dim tensors by the argument parser and cast inside a kernel (12 bytes seen at
# an AdamW peak), and the CPU RNG state that checkpointing saves with torch.get_rng_state().
SCALARS = 64
RNG_STATE = torch.get_rng_state().numel()


def tiny(batch: int = 2, seq: int = 256, dtype: str = "auto") -> TrainSpec:
    # seq 256: activations outweigh AdamW's largest temporary, so the peak falls in backward, where
    # checkpointing and the reversible blocks differ from standard.
    return TrainSpec(model=ModelSpec("tiny-qwen2-moe", layers=1, dtype=dtype), workload=Workload(batch, seq))


@pytest.mark.parametrize(("method", "dtype", "seq", "unseen"), [
    ("standard", "auto", 256, SCALARS),
    ("standard", "bfloat16", 64, SCALARS),  # torch's own meta kernel for grouped_mm (the paper-scale path)
    ("checkpointing", "auto", 256, RNG_STATE + SCALARS),
    ("revffn", "auto", 256, SCALARS),
])
def test_estimate_equals_the_measured_cpu_bytes(method: str, dtype: str, seq: int, unseen: int) -> None:
    spec = tiny(seq=seq, dtype=dtype)
    measured = run_method(method, spec, steps=1, warmup=1).metrics["memory"]["tensor_bytes"]
    estimate = estimate_method(method, spec, target="cpu")
    assert estimate.status == "ok", estimate.reason
    got = estimate.tensor_bytes
    for category in ("params", "grads", "optimizer"):
        assert getattr(got, category) == measured[category], category
    assert 0 <= measured["activations"] - got.activations <= unseen
    assert got.total == estimate.peak_bytes == estimate.to_dict()["peak_bytes"]


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["standard", "checkpointing", "revffn"])
def test_estimate_is_close_to_a_real_cuda_step(method: str) -> None:
    spec = replace(tiny(), device="cuda")  # bf16 on CUDA
    measured = run_method(method, spec, steps=1, warmup=1).metrics["memory"]["tensor_bytes"]
    estimate = estimate_method(method, spec, target="cuda")
    assert estimate.status == "ok", estimate.reason
    assert estimate.tensor_bytes.params == measured["params"]
    # The same code on CUDA kernels, whose workspaces (cuBLAS, grouped GEMM) the profiler counts and fake
    # tensors cannot: close, not equal.
    assert abs(measured["total"] - estimate.peak_bytes) <= 0.05 * measured["total"]


def test_cuda_target_takes_the_foreach_adamw_path_a_real_step_confirms() -> None:
    spec = tiny(seq=64, dtype="float32")
    cuda = estimate_method("standard", spec, target="cuda").tensor_bytes
    cpu = estimate_method("standard", spec, target="cpu").tensor_bytes
    # A real CPU step with AdamW's CUDA default (foreach) asked for, measured by the profiler.
    method = create_method("standard", replace(spec, optimizer=OptimizerSpec(implementation="foreach")))
    method.prepare()
    stream = TokenStream(spec.workload, method.vocab_size)
    method.train_step(stream.batch(0))
    method.zero_grad()
    _, real = measure_peak_bytes(lambda: method.train_step(stream.batch(1)), method.state_tensors)
    assert (cuda.params, cuda.grads, cuda.optimizer) == (real.params, real.grads, real.optimizer)
    assert 0 <= real.workspace - cuda.workspace <= SCALARS
    # The multi-tensor sqrt of every exp_avg_sq at once is as large as the parameters: optimizer workspace.
    assert cuda.phase == "optimizer" and cuda.workspace >= cuda.grads > 0 and cuda.workspace > cpu.workspace


def test_fit_finds_the_largest_batch_under_a_budget() -> None:
    spec = tiny(batch=1, seq=64)
    budget = estimate_method("standard", replace(spec, workload=Workload(3, 64)), target="cpu").peak_bytes
    fit = fit_method("standard", spec, budget, axis="batch", target="cpu")
    assert fit.largest == 3 and fit.peak_bytes == budget
    assert fit.probes[4] > budget  # the next size was probed and does not fit
    assert len(fit.probes) <= 5


def test_search_narrows_a_piecewise_affine_peak() -> None:
    def peak(n: int) -> int:  # flat while the optimizer step dominates, then growing with the batch
        return max(1000, 200 * n + 300)

    assert search_largest(peak, 999, 1, 4096)[0] is None
    for budget, expected in [(1000, 3), (5000, 23), (5099, 23), (10**9, 4096)]:
        largest, capped, probes = search_largest(peak, budget, 1, 4096)
        assert largest == expected and capped == (expected == 4096)
        assert len(probes) <= 14


def test_parse_bytes() -> None:
    assert parse_bytes("80GiB") == 80 * 2**30
    assert parse_bytes("141GB") == 141 * 10**9
    assert parse_bytes("1.5e9") == 1_500_000_000
    with pytest.raises(ValueError, match="80GiB"):
        parse_bytes("eighty")


def test_estimate_command_prints_one_json_object_per_method(capsys) -> None:
    code = main(["estimate", "--model", "tiny-qwen2-moe", "--layers", "1", "--method",
                 "standard,zero2-offload,lora,checkpoint+adamw-8bit-in-backward+chunked", "--batch", "2", "--seq", "64",
                 "--device", "cpu", "--budget", "1GiB", "--json", "--jobs", "2"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len({tuple(row) for row in lines}) == 1, "every row has the same keys"
    rows = {row["method"]: row for row in lines}
    standard, offload = rows["standard"], rows["zero2-offload"]
    assert (standard["layers"], standard["dtype"], standard["device"]) == (1, "float32", "cpu")
    expected = estimate_method("standard", tiny(seq=64), target="cpu").tensor_bytes
    assert standard["device_peak_bytes"] == expected.total and standard["fits"] is True
    assert [standard[c] for c in ("params", "grads", "optimizer", "activations")] == [
        expected.params, expected.grads, expected.optimizer, expected.activations]
    assert standard["host_peak_bytes"] == 0 and rows["lora"]["status"] == "ok"
    composed = rows["checkpoint+adamw-8bit-in-backward+chunked"]
    assert composed["status"] == "ok" and composed["techniques"] == {
        "activations": "checkpoint", "states": "adamw-8bit-in-backward", "loss": "chunked"}
    assert standard["techniques"] == {"activations": "store", "states": "adamw", "loss": "full"}
    assert offload["status"] == "ok" and offload["optimizer"] == 0
    assert offload["host_peak_bytes"] == offload["host_params"] + offload["host_grads"] + offload["host_optimizer"]
    assert offload["host_optimizer"] == 12 * standard["parameters"]  # fp32 master + Adam's two moments


def test_estimate_command_fits_both_axes(capsys) -> None:
    budget = estimate_method("standard", replace(tiny(seq=64), workload=Workload(3, 64)), target="cpu").peak_bytes
    code = main(["estimate", "--model", "tiny-qwen2-moe", "--layers", "1", "--method", "standard", "--batch", "1",
                 "--seq", "64", "--device", "cpu", "--budget", str(budget), "--fit", "--json", "--jobs", "1"])
    assert code == 0
    row = json.loads(capsys.readouterr().out)
    assert row["largest_batch"] == 3 and row["largest_seq"] >= 3 * 64 - 1 and row["fits"] is True


def test_estimate_command_rejects_fit_without_budget(capsys) -> None:
    assert main(["estimate", "--model", "tiny-qwen2-moe", "--fit"]) == 2
    assert "--budget" in capsys.readouterr().err
