import json

import pytest
import torch

from revbench.cli import main
from revbench.measure import cuda_allocator
from revbench.measure.categories import CATEGORIES, default_state_tensors
from revbench.measure.nvml import NvmlMemory
from revbench.measure.phases import PhaseRanges, phase
from revbench.measure.profiler_bytes import ProfiledStep, measure_peak_bytes, with_missed_frees
from revbench.measure.storage_tracker import mark_live, measure_peak_bytes_tracked, track_step
from revbench.measure.timing import step_stats
from revbench.methods import OptimizerSpec
from revbench.models import ModelSpec, build_model

MEASURES = [
    pytest.param(lambda fn, states: measure_peak_bytes(fn, states), id="profiler"),
    pytest.param(measure_peak_bytes_tracked, id="storage-tracker"),
]


@pytest.mark.parametrize("measure", MEASURES)
def test_known_allocations_exact_bytes(measure) -> None:
    param = torch.nn.Parameter(torch.zeros(100))  # 400 bytes, pre-existing
    kept: list[torch.Tensor] = []

    def fn() -> None:
        a = torch.empty(1000)  # 4000
        b = torch.empty(500, dtype=torch.float64)  # 4000 -> live 8000 above the param: the peak
        del a, b
        param.grad = torch.ones(100)  # 400, becomes a gradient
        kept.append(torch.empty(250))  # 1000, outlives the window but is no model state

    _, measured = measure(fn, lambda: {"params": [param], "grads": [param.grad] if param.grad is not None else []})
    assert (measured.params, measured.grads, measured.optimizer, measured.activations) == (400, 0, 0, 8000)
    assert measured.total == 8400


def test_a_marked_moment_keeps_what_was_live_at_its_fullest() -> None:
    """mark_live() notes the running step's live storages; of several marks the fullest is kept, whatever the peak
    (leaf_end.py marks where each MoE block's backward ends)."""
    def fn() -> None:
        a = torch.empty(1000)  # 4000
        mark_live()
        b = torch.empty(500)  # 2000
        mark_live()  # 6000 live: the fullest mark
        c = torch.empty(2000)  # 8000: the peak, 14000
        del a, c
        mark_live()  # 2000
        del b

    traced = track_step(fn, lambda: {}, by_phase=False)
    assert traced.breakdown(None, None).activations == 14_000
    assert traced.at_mark().activations == 6_000
    mark_live()  # outside a step: no tracker is running
    assert track_step(lambda: torch.empty(3), lambda: {}, by_phase=False).at_mark() is None


@pytest.mark.parametrize("measure", MEASURES)
def test_workspace_host_and_phase_of_the_peak(measure) -> None:
    param = torch.nn.Parameter(torch.zeros(100))  # 400 bytes
    offloaded = torch.zeros(50)  # 200 bytes of optimizer state said to live in host memory
    kept: list[torch.Tensor] = []

    def fn() -> None:
        with phase("forward"):
            kept.append(torch.empty(1000))  # 4000, an activation held to the end
        with phase("optimizer"):
            scratch = torch.empty(2000)  # 8000 of optimizer workspace: the peak is here
            del scratch

    _, measured = measure(fn, lambda: {"params": [param], "optimizer": [offloaded], "host": [offloaded]})
    assert (measured.params, measured.optimizer, measured.activations, measured.workspace) == (400, 200, 4000, 8000)
    assert (measured.host, measured.device, measured.phase) == (200, 12400, "optimizer")


def _training_step(preset: str):
    model = build_model(ModelSpec(preset, layers=2))
    optimizer = OptimizerSpec().build(model.parameters())
    batch = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()

    step()
    optimizer.zero_grad(set_to_none=True)
    return step, lambda: default_state_tensors(model, optimizer), model, optimizer


@pytest.mark.parametrize("preset", ["tiny-qwen2-moe", "tiny-olmoe"])
def test_profiler_and_storage_tracker_agree_on_a_tiny_model(preset: str) -> None:
    step, states, _, optimizer = _training_step(preset)
    _, by_profiler = measure_peak_bytes(step, states)
    optimizer.zero_grad(set_to_none=True)
    _, by_tracker = measure_peak_bytes_tracked(step, states)
    for category in ("params", "grads", "optimizer"):
        assert getattr(by_profiler, category) == getattr(by_tracker, category), category
    # The allocator also sees a few scalar temporaries that kernels make without dispatching an op
    # (seen: 12 bytes at the peak of a 32 MB step); the dispatch-level tracker cannot see those.
    assert 0 <= by_profiler.activations - by_tracker.activations <= 64
    assert by_profiler.total - by_tracker.total == by_profiler.activations - by_tracker.activations


def test_a_free_the_profiler_missed_is_put_back_before_the_pointer_is_reused() -> None:
    # Block 1 is allocated again while still live by the events: its free went unreported. Counted live to the end,
    # it would make a peak of 230 B at the third event; retired just before the reuse, the peak is the true 150 B.
    events, missed = with_missed_frees([(1, 100, 10), (2, 50, 20), (1, 80, 30), (2, -50, 40)])
    assert missed == 1 and events[2] == (1, -100, 30)
    step = ProfiledStep(None, "cpu", events, PhaseRanges([(0, 50, "forward")]), before={}, after={}, host=set(),
                        missed_frees=missed)
    assert step.peak().total == 150
    assert step.timeline()["total"].max() == 150


def test_categories_sum_to_total_and_repeat_identically() -> None:
    step, states, model, optimizer = _training_step("tiny-qwen2-moe")
    runs = []
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        runs.append(measure_peak_bytes(step, states)[1])
    first, second = runs
    assert first == second
    assert first.total == sum(getattr(first, c) for c in CATEGORIES)
    param_bytes = sum(p.numel() * 4 for p in model.parameters()) + sum(b.nbytes for b in model.buffers())
    assert first.params == param_bytes
    assert first.optimizer >= 2 * sum(p.numel() * 4 for p in model.parameters())  # exp_avg, exp_avg_sq
    assert first.activations > 0


def test_cuda_and_nvml_degrade_to_null_with_a_reason_on_cpu() -> None:
    peaks = cuda_allocator.allocator_peaks("cpu")
    assert peaks["max_allocated_bytes"] is None and "cpu" in peaks["unavailable"]
    with NvmlMemory("cpu") as nvml:
        pass
    result = nvml.result()
    assert result["device_used_peak_bytes"] is None and result["unavailable"]


def test_step_stats() -> None:
    stats = step_stats([0.3, 0.1, 0.2, 0.4, 0.5], samples_per_step=4, tokens_per_step=400)
    assert stats["step_time_s"]["median"] == pytest.approx(0.3)
    assert stats["step_time_s"]["p10"] == pytest.approx(0.14)
    assert stats["step_time_s"]["p90"] == pytest.approx(0.46)
    assert stats["tokens_per_s"] == pytest.approx(400 / 0.3)


def test_env_command_prints_the_stamp(capsys) -> None:
    assert main(["env", "--json"]) == 0
    stamp = json.loads(capsys.readouterr().out)
    for key in ("revbench", "torch", "transformers", "deepspeed", "cuda", "driver", "gpu", "cpu", "git_commit",
                "time"):
        assert key in stamp
    assert stamp["torch"] == torch.__version__
