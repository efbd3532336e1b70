"""The methods fake tensors cannot run whole, estimated and checked against measured tiny runs on CPU.

LoRA runs on fake tensors after a meta-device build (estimate/meta_build.py), so it must equal the measurement
like the other fake-tensor methods. DeepSpeed's ZeRO methods are estimated by a layout model of their
buffers plus a fake-tensor forward and backward, and on the device a replay of the step on fake float32 masters
(estimate/zero_layout.py, zero_step.py). On CPU host and
device are one memory, so the measurement holds both figures' sum.
"""

from __future__ import annotations

import gc

import pytest
import torch

from revbench.data import Workload
from revbench.estimate import estimate_method
from revbench.estimate.zero_layout import ParamLayout, master_partitions, zero2_layout, zero3_layout, zero_layout
from revbench.harness import run_method
from revbench.methods import TrainSpec
from revbench.models import ModelSpec, build_model

SCALARS = 64  # what the storage tracker cannot see and the profiler can (see tests/test_estimate.py)
# tiny-qwen2-moe: the fused expert weights gate_up_proj [8, 2 * 256, 128] are the largest parameter.
LARGEST = 8 * 512 * 128


def tiny(seq: int) -> TrainSpec:
    return TrainSpec(model=ModelSpec("tiny-qwen2-moe", layers=1), workload=Workload(2, seq))


def test_lora_estimate_equals_the_measured_cpu_bytes() -> None:
    spec = tiny(256)
    measured = run_method("lora", spec, steps=1, warmup=1).metrics["memory"]["tensor_bytes"]
    estimate = estimate_method("lora", spec, target="cpu")
    assert estimate.status == "ok", estimate.reason
    got = estimate.tensor_bytes
    for category in ("params", "grads", "optimizer"):
        assert getattr(got, category) == measured[category], category
    assert 0 <= measured["activations"] - got.activations <= SCALARS
    assert estimate.host_peak_bytes == 0


def both(estimate, category: str) -> int:
    return getattr(estimate.tensor_bytes, category) + getattr(estimate.host_bytes, category)


@pytest.mark.deepspeed
@pytest.mark.parametrize("seq", [64, 128])
@pytest.mark.parametrize("method", ["zero2-offload", "zero3-offload", "revffn-zero2-offload"])
def test_zero_offload_estimate_bounds_the_measured_cpu_bytes(method: str, seq: int) -> None:
    spec = tiny(seq)
    # Earlier tests' cyclic garbage, collected inside the measured window, would lower the measured peak: the
    # measurement counts frees of tensors allocated before the window (seen once, in a combined run).
    gc.collect()
    measured = run_method(method, spec, steps=1, warmup=1).metrics["memory"]["tensor_bytes"]
    estimate = estimate_method(method, spec, target="cpu")
    assert estimate.status == "ok", estimate.reason
    # Master weights and Adam's moments: DeepSpeed's flat fp32 buffers, to the byte.
    assert both(estimate, "optimizer") == measured["optimizer"]
    total = estimate.peak_bytes + estimate.host_peak_bytes
    # The device figure is an upper bound: it adds a transient at its largest to the activations' peak, where
    # the real step's peak need not hold it. ZeRO-2: the float32 temporaries of one gradient's hand-over to the
    # host (the largest parameter's). ZeRO-3: the gathered working set (the largest module's own parameters
    # plus the prefetch bucket).
    experts_module = LARGEST + 8 * 128 * 256  # gate_up_proj and down_proj [8, 128, 256]
    bound = LARGEST * 4 if method != "zero3-offload" else (experts_module + int(0.9 * 128 * 128)) * 4
    assert 0 <= total - measured["total"] <= bound + SCALARS, (total, measured)
    if method == "zero2-offload":
        # The low-precision flat buffer and its host staging copy; the fp32 gradient partition, the two
        # largest-parameter staging buffers, and the ipg bucket (the measurement counts the bucket, made
        # inside the measured step, as an activation).
        assert both(estimate, "params") == measured["params"]
        assert both(estimate, "grads") == measured["grads"] + 128 * 128 * 4


@pytest.mark.deepspeed
@pytest.mark.parametrize("seq", [64, 256])
@pytest.mark.parametrize("method", ["zero1", "zero2", "zero3"])
def test_zero_on_the_device_estimate_equals_the_measured_cpu_bytes(method: str, seq: int) -> None:
    """At 2 x 64 the peak is the device step's (float32 gradient partition and AdamW's temporaries, replayed on
    fake masters), at 2 x 256 the end of backward (whole gradients, ZeRO-2's gradient partition, the bucket)."""
    spec = tiny(seq)
    gc.collect()
    # gloo's worker thread sometimes frees a buffer the profiler does not hear: such a reading only ever adds
    # (tests/test_estimate_combinations.py), so the lowest of up to three is kept.
    estimate = estimate_method(method, spec, target="cpu")
    assert estimate.status == "ok", estimate.reason
    assert estimate.host_bytes is None and estimate.host_peak_bytes == 0
    readings = []
    for _ in range(3):
        readings.append(run_method(method, spec, steps=1, warmup=1).metrics["memory"]["tensor_bytes"])
        if readings[-1]["total"] - estimate.peak_bytes <= 1024:
            break
    measured = min(readings, key=lambda r: r["total"])
    assert measured["phase"] == estimate.tensor_bytes.phase == ("optimizer" if seq == 64 else "backward")
    for category in ("params", "optimizer"):
        assert getattr(estimate.tensor_bytes, category) == measured[category], category
    # Python scalars the profiler sees and the tracker does not: 8 to 520 bytes seen.
    assert 0 <= measured["total"] - estimate.peak_bytes <= 1024, (measured["total"], estimate.peak_bytes)


def test_layouts_are_deepspeeds_buffer_sizes() -> None:
    model = build_model(ModelSpec("tiny-qwen2-moe", layers=1))
    params = ParamLayout.of(model)
    n = sum(params.trainable)
    zero = {"reduce_bucket_size": 1000, "stage3_param_persistence_threshold": 1280, "overlap_comm": False}
    two = zero2_layout(params, zero)
    assert (two.device.params, two.host.params) == (4 * n + params.buffer_bytes, 4 * n)
    assert (two.device.grads, two.host.grads) == (4 * LARGEST + 4000, 4 * n + 4 * LARGEST)
    assert (two.device.optimizer, two.host.optimizer) == (0, 12 * n)
    three = zero3_layout(params, zero)
    persistent = sum(p.numel() for p in model.parameters() if p.numel() <= 1280)
    assert three.device.params == 4 * persistent + params.buffer_bytes and three.host.params == 4 * n
    assert (three.device.grads, three.host.grads) == (4000, 8 * n)
    # bf16: half-size low-precision buffers, the fp32 ones unchanged; overlap_comm doubles the bucket.
    half = ParamLayout(params.trainable, 0, 0, torch.bfloat16, params.modules)
    two = zero2_layout(half, {**zero, "overlap_comm": True})
    assert (two.device.params, two.device.grads, two.host.optimizer) == (2 * n, 2 * LARGEST + 4000, 12 * n)
    # On the device: nothing on the host; ZeRO-1/2 the flat buffer and the bucket (released before the step),
    # ZeRO-3 the partitions and the gradient partition, gathering nothing at one rank.
    for stage in (1, 2):
        device = zero_layout(stage, False, params, zero)
        assert (device.device.params, device.device.grads, device.backward_only) == (
            4 * n + params.buffer_bytes, 4000, 4000)
        assert device.host.total == 0
    three = zero_layout(3, False, params, zero)
    assert (three.device.params, three.device.grads, three.gathered, three.host.total) == (
        4 * n + params.buffer_bytes, 4 * n + 4000, 0, 0)
    # Float32 master partitions: one flat group for ZeRO-1/2, ZeRO-3's sub-groups closed at sub_group_size.
    assert master_partitions(2, params, zero) == [n + n % 2]
    sub = {**zero, "sub_group_size": LARGEST}
    groups = master_partitions(3, params, sub)
    assert sum(groups) == n and len(groups) > 1 and all(g >= LARGEST for g in groups[:-1])
