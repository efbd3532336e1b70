"""Real multi-rank runs on CPU: torchrun starts 2 gloo ranks, each trains on half the global batch, and the
parent merges their outcomes into one record; and 2 nodes x 1 rank on localhost, two `revbench run` processes
meeting at torchrun's c10d rendezvous. Kept small (2 layers, seq 32, 1 timed step: 10-30 s a run on
2 cores; about 2 minutes for the file, most of it DeepSpeed's start-up); the full `scale-out` suite is
`revbench run scale-out`.

Identity across ranks: N ranks train on the same global batch as one rank, so their losses agree within
LOSS_RTOL. They are not bit-identical: the router's load-balancing loss is computed over each rank's own
tokens, and the reductions run in another order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from revbench.data import Workload
from revbench.estimate.scale_out import ScaleOut, estimate_scale_out
from revbench.estimate.sharding import ModelShape, rank_states
from revbench.models import ModelSpec, build_model
from revbench.orchestrator import Suite, plan_run
from revbench.orchestrator.launch import execute, free_port
from revbench.records import RunRecord, read_records
from revbench.reports.frame import load_records, runs_frame
from revbench.reports.scale_out import rank_table
from revbench.spec import TrainSpec

LOSS_RTOL = 1e-4
# The tiny Qwen2-MoE at 2 layers: 2,133,376 parameters, float32 on CPU, none of whose counts is odd, so ZeRO's
# per-rank partitions need no padding at 2 ranks.
PARAMS = 2_133_376


def measured(method: str, ranks: int, out: Path, options: dict | None = None) -> RunRecord:
    suite = Suite(name="ranks", model=ModelSpec(layers=2), workload=Workload(batch=2, seq=32, data="text"),
                  methods=[method], device="cpu", ranks=ranks, steps=1, warmup=1, timeout_s=600,
                  options={method: options} if options else {})
    record = execute(plan_run(suite, method), out, {})
    assert record.status == "ok", record.error
    return record


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], RunRecord]:
    out = tmp_path_factory.mktemp("zero")
    return {(method, ranks): measured(method, ranks, out)
            for method in ("zero2-offload", "zero3-offload") for ranks in (1, 2)}


def tensor_bytes(record: RunRecord, rank: int | None = None) -> dict:
    ranks = record.metrics.get("ranks")
    return record.metrics["memory"]["tensor_bytes"] if rank is None else ranks["per_rank"][rank]["memory"][
        "tensor_bytes"]


@pytest.mark.deepspeed
@pytest.mark.parametrize("method", ["zero2-offload", "zero3-offload"])
def test_two_ranks_train_like_one_on_the_same_global_batch(zero_runs: dict, method: str) -> None:
    one, two = zero_runs[method, 1], zero_runs[method, 2]
    assert len(one.losses) == len(two.losses) == 3
    assert two.losses == pytest.approx(one.losses, rel=LOSS_RTOL)
    assert two.losses[-1] < two.losses[0]  # it trains
    assert two.metrics["ranks"]["count"] == 2 and two.method_stats["ranks"] == 2
    assert two.config["ranks"] == 2 and "ranks" not in one.metrics


@pytest.mark.deepspeed
def test_zero3_partitions_every_model_state_in_half_at_two_ranks(zero_runs: dict) -> None:
    one = tensor_bytes(zero_runs["zero3-offload", 1])
    # Offloaded: the float32 parameter partition, its gradient partition (and the CPU gradient buffer of as many
    # bytes) and the optimizer's master weights, momentum and variance: 4, 8 and 12 bytes a parameter.
    assert (one["host_params"], one["host_grads"], one["host_optimizer"]) == (8_533_504, 17_067_008, 25_600_512)
    assert (one["host_params"], one["host_grads"], one["host_optimizer"]) == (4 * PARAMS, 8 * PARAMS, 12 * PARAMS)
    for rank in (0, 1):
        two = tensor_bytes(zero_runs["zero3-offload", 2], rank)
        assert (two["host_params"], two["host_grads"], two["host_optimizer"]) == (4_266_752, 8_533_504, 12_800_256)
    record = zero_runs["zero3-offload", 2]
    assert record.metrics["ranks"]["sum"]["tensor_bytes"]["host_optimizer"] == one["host_optimizer"]


@pytest.mark.deepspeed
def test_zero2_partitions_gradients_and_optimizer_states_but_not_parameters(zero_runs: dict) -> None:
    one, two = tensor_bytes(zero_runs["zero2-offload", 1]), tensor_bytes(zero_runs["zero2-offload", 2], 0)
    assert one["host_optimizer"] == 12 * PARAMS and two["host_optimizer"] == 6 * PARAMS
    assert one["host_params"] == 4 * PARAMS and two["host_params"] == 2 * PARAMS  # the bit16 staging partition
    assert two["params"] - two["host_params"] >= 4 * PARAMS  # every rank holds the whole model's parameters


@pytest.fixture(scope="module")
def zero_device_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunRecord]:
    out = tmp_path_factory.mktemp("zero-device")
    return {stage: measured(stage, 2, out)
            for stage in ("zero1", "zero2", "zero3", "checkpoint+zero3+full", "revffn+zero2+full")}


@pytest.mark.deepspeed
@pytest.mark.parametrize("stage", ["zero1", "zero2", "zero3"])
def test_zero_on_the_device_at_two_ranks_trains_like_one_and_matches_its_layout(zero_runs: dict,
                                                                                zero_device_runs: dict,
                                                                                stage: str) -> None:
    """ZeRO-1/2/3 without offload at 2 ranks: the same losses as one rank (ZeRO-2 offload's: the same math), and
    each rank's parameters, float32 masters with AdamW's moments (and ZeRO-3's gradient partition) to the byte."""
    record = zero_device_runs[stage]
    assert record.losses == pytest.approx(zero_runs["zero2-offload", 1].losses, rel=LOSS_RTOL)
    estimate = rank_states(stage, ModelShape.of(ModelSpec(layers=2), "cpu"), 2, "cpu")
    for rank in (0, 1):
        rank_bytes = tensor_bytes(record, rank)
        assert (rank_bytes["params"], rank_bytes["optimizer"]) == (estimate.params, estimate.optimizer)
        assert rank_bytes["optimizer"] == 6 * PARAMS + 4  # 12 bytes a parameter over 2 ranks + AdamW's step count
        assert rank_bytes["host"] == 0
        if stage == "zero3":  # the gradient partition is persistent; ZeRO-1/2's gradients are gone at the step
            assert rank_bytes["grads"] == estimate.grads


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, RunRecord]:
    out = tmp_path_factory.mktemp("ddp")
    return {ranks: measured("store+adamw-ddp+full", ranks, out) for ranks in (1, 2)}


def test_ddp_two_ranks_train_like_one_and_replicate_the_states(ddp_runs: dict) -> None:
    one, two = ddp_runs[1], ddp_runs[2]
    assert two.losses == pytest.approx(one.losses, rel=LOSS_RTOL)
    for rank in (0, 1):
        replica = tensor_bytes(two, rank)
        # Whole parameters, gradients (DDP's buckets) and AdamW's two moments on every rank.
        assert (replica["params"], replica["grads"]) == (4 * PARAMS + 128, 4 * PARAMS)  # + the rotary buffer
        assert replica["optimizer"] == 8 * PARAMS + 35 * 4  # and a float32 step counter per parameter tensor
    throughput = two.metrics["samples_per_s"]
    assert throughput == pytest.approx(2 / two.metrics["step_seconds"][0])  # both ranks' samples per step


@pytest.fixture(scope="module")
def fsdp2_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], RunRecord]:
    out = tmp_path_factory.mktemp("fsdp2")
    return {(states, ranks): measured(f"store+{states}+full", ranks, out)
            for states in ("fsdp2", "fsdp2-offload") for ranks in (1, 2)}


@pytest.mark.parametrize("states", ["fsdp2", "fsdp2-offload"])
def test_fsdp2_two_ranks_train_like_one_and_shard_every_parameter(fsdp2_runs: dict, states: str) -> None:
    one, two = fsdp2_runs[states, 1], fsdp2_runs[states, 2]
    assert two.losses == pytest.approx(one.losses, rel=LOSS_RTOL)
    assert two.method_stats["world_size"] == 2 and two.method_stats["fsdp_units"] == 3
    # fully_shard splits each parameter along its first dimension, padded to a multiple of the ranks (the shared
    # expert's 1 x 128 gate: one padded row each) and keeps the padded shard.
    model = build_model(ModelSpec(layers=2))
    shard = sum(4 * -(-p.shape[0] // 2) * p[0].numel() for p in model.parameters())
    assert tensor_bytes(one)["params"] == 4 * PARAMS + 128  # + the rotary buffer, not sharded
    for rank in (0, 1):
        measured_bytes = tensor_bytes(two, rank)
        assert measured_bytes["params"] == shard + 128
        assert measured_bytes["host_params"] == (shard + 128 if states == "fsdp2-offload" else 0)  # on CPU: host


@pytest.fixture(scope="module")
def gpus_estimate() -> ScaleOut:
    """`revbench estimate --gpus 2` of the runs above: FSDP2's own step on fake tensors as rank 0 of 2."""
    spec = TrainSpec(model=ModelSpec(layers=2), workload=Workload(batch=2, seq=32, data="text"))
    return estimate_scale_out(spec, 2, target="cpu")


@pytest.mark.parametrize("states", ["fsdp2", "fsdp2-offload"])
def test_the_fsdp2_estimate_at_two_ranks_is_within_3_percent_of_each_rank(fsdp2_runs: dict, gpus_estimate: ScaleOut,
                                                                        states: str, tmp_path: Path) -> None:
    peak, record = gpus_estimate.peaks[states], fsdp2_runs[states, 2]
    # A rank whose profiler missed a free (gloo's thread dropped a collective's buffer last) peaks a buffer above the
    # truth (measure/profiler_bytes.py); the replay finds such a free only where its pointer comes back, so a missed
    # free can also go unflagged. Missed frees only ever add: the ranks are alike, and the lowest reading of up to
    # three runs is compared.
    readings = []
    for _ in range(3):
        for rank in (0, 1):
            rank_bytes = tensor_bytes(record, rank)
            print(f"{states} rank {rank}: estimated / measured per GPU {peak.per_gpu:,} / {rank_bytes['device']:,} B "
                  f"({peak.per_gpu / rank_bytes['device']:.4f}), host {peak.states.host:,} / {rank_bytes['host']:,} B")
            readings.append(rank_bytes)
        if any(r["device"] == pytest.approx(peak.per_gpu, rel=0.03) for r in readings):
            break
        record = measured(f"store+{states}+full", 2, tmp_path)
    best = min(readings, key=lambda r: r["device"])
    assert peak.per_gpu == pytest.approx(best["device"], rel=0.03)
    assert peak.states.host == pytest.approx(best["host"], rel=0.03)


def at_distance_zero(folder: Path) -> Path:
    """The shipped ZeRO-3 config with every module released right after it runs: how DeepSpeed's default distance
    (1e9 parameters) treats a model whose layers are each near that size (Qwen1.5-MoE-A2.7B's are 0.57e9)."""
    from revbench.states.zero import ZERO_TECHNIQUES

    config = ZERO_TECHNIQUES["zero3"].load_config()
    config["zero_optimization"]["stage3_max_reuse_distance"] = 0
    path = folder / "zero3-distance-0.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def distance_zero_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunRecord]:
    out = tmp_path_factory.mktemp("zero3-distance-0")
    config = at_distance_zero(out)
    return config, measured("zero3", 2, out, {"config": str(config)})


def in_place(record: RunRecord, method: str, per_gpu: int) -> list[int]:
    """Each rank's device peak less what gloo's collectives copy (NCCL works in place), printed beside the
    estimate."""
    readings = [tensor_bytes(record, rank) for rank in (0, 1)]
    for rank, rank_bytes in enumerate(readings):
        bytes_in_place = rank_bytes["device"] - rank_bytes["collectives"]
        print(f"{method} rank {rank}: estimated / measured per GPU {per_gpu:,} / {bytes_in_place:,} B "
              f"({per_gpu / bytes_in_place:.4f}; gloo's collective buffers {rank_bytes['collectives']:,} B more), "
              f"peak in {rank_bytes['phase']}")
    return [r["device"] - r["collectives"] for r in readings]


@pytest.mark.deepspeed
@pytest.mark.parametrize("method", ["zero1", "zero2", "zero3", "checkpoint+zero3+full", "revffn+zero2+full",
                                    "zero3-offload", "store+adamw-ddp+full"])
def test_the_zero_and_ddp_estimates_at_two_ranks_are_within_3_percent_of_each_rank(zero_runs: dict,
                                                                                  zero_device_runs: dict,
                                                                                  ddp_runs: dict,
                                                                                  gpus_estimate: ScaleOut,
                                                                                  method: str) -> None:
    """The per-GPU estimate models NCCL's in-place collectives; gloo copies what it reduce-scatters and gathers
    (ZeRO-3's gradient buckets: 1.8-2.0 MB here), and each record says by how much (`collectives`), so the estimate
    is held to the measured peak less that. RevFFN's states are those of the model it trains, adapters included.
    ZeRO-1/2 peak at their step (the states, the float32 gradient partition and AdamW's temporaries:
    sharding.device_step); ZeRO-3 in backward, with what DeepSpeed keeps gathered from forward (zero3_gather.py:
    the whole tiny model is within its reuse distance) and a MoE block's every gradient until the block's backward
    ends: its figure is the larger of two moments, the technique's peak and the block's end (leaf_end.py). With the
    optimizer offloaded, a float64 copy of a gradient partition, whose norm DeepSpeed takes in backward. A rank's
    reading may hold a block gloo's thread freed unheard (only ever more: 2.3 MB seen): the lower rank is
    compared."""
    peak = gpus_estimate.peaks[method]
    record = ddp_runs[2] if method == "store+adamw-ddp+full" else (
        zero_runs[method, 2] if "offload" in method else zero_device_runs[method])
    readings = in_place(record, method, peak.per_gpu)
    if method in ("zero1", "zero2", "revffn+zero2+full"):
        assert peak.states.step_device == peak.per_gpu
    if "zero3" in method:
        assert peak.states.step_device < peak.per_gpu and peak.states.leaf_grads > 0
        assert peak.states.gathered == 4 * 2_129_920  # every parameter past the persistent ones
    if method == "zero3-offload":  # the gate_up_proj's partition, half of it
        assert peak.states.norm_copy == 8 * 8 * 512 * 128 // 2
    assert peak.per_gpu == pytest.approx(min(readings), rel=0.03)


@pytest.mark.deepspeed
def test_the_zero2_offload_estimate_is_within_3_percent_of_its_fullest_rank(zero_runs: dict, gpus_estimate: ScaleOut,
                                                                          tmp_path: Path) -> None:
    """ZeRO-2 offload's ranks differ by what their flat partitions hold: before copying a gradient to the host,
    DeepSpeed takes the norm of this rank's piece of it in float64, and each rank's piece holds one layer's
    gate_up_proj whole; the rank with the last layer's copies it while the most activations are alive (the other
    rank's reading is 0.96 of it). The per-GPU figure is the fullest GPU's. A reading that holds a block gloo's
    thread freed unheard (1 MB seen) is only ever more: the lowest of up to three runs' fullest ranks is compared."""
    peak = gpus_estimate.peaks["zero2-offload"]
    assert peak.states.norm_copy == 8 * 8 * 512 * 128
    fullest = [max(in_place(zero_runs["zero2-offload", 2], "zero2-offload", peak.per_gpu))]
    while len(fullest) < 3 and fullest[-1] != pytest.approx(peak.per_gpu, rel=0.03):
        fullest.append(max(in_place(measured("zero2-offload", 2, tmp_path), "zero2-offload", peak.per_gpu)))
    assert peak.per_gpu == pytest.approx(min(fullest), rel=0.03)


@pytest.mark.deepspeed
def test_past_the_reuse_distance_forward_s_views_keep_the_expert_weights_and_the_estimate_says_so(
        distance_zero_run: tuple[Path, RunRecord]) -> None:
    """ZeRO-3 releasing every module right after it runs (the regime of paper-scale layers): autograd's saved views
    of the fused expert weights still hold both layers' gathered experts until backward, and the block re-gathered
    for backward is a third copy (zero3_gather.py). The estimate reads the run's own DeepSpeed config. Not modelled:
    the 0.3 MB of attention weights DeepSpeed prefetches ahead (measured ratio 0.972)."""
    from revbench.estimate.scale_out import RankPeaks
    from revbench.methods.composition import Composition

    config, record = distance_zero_run
    spec = TrainSpec(model=ModelSpec(layers=2), workload=Workload(batch=1, seq=32, data="text"),
                     options={"config": str(config)})
    peak = RankPeaks(spec, "cpu").peak(Composition("store", "zero3", "full"), 2, 1)
    experts, block = 786_432, 984_192 - 1024 - 128
    assert peak.states.gathered == 4 * (2 * experts + block)
    assert peak.per_gpu == pytest.approx(min(in_place(record, "zero3 at distance 0", peak.per_gpu)), rel=0.03)


STATE_FIELDS = ("params", "grads", "optimizer", "host_params", "host_grads", "host_optimizer")


@pytest.mark.deepspeed
@pytest.mark.parametrize("states", ["zero2-offload", "zero3-offload", "adamw-ddp"])
def test_the_sharding_estimate_is_every_measured_rank_to_the_byte(zero_runs: dict, ddp_runs: dict,
                                                                  states: str) -> None:
    shape = ModelShape.of(ModelSpec(layers=2), "cpu")
    for ranks in (1, 2):
        record = ddp_runs[ranks] if states == "adamw-ddp" else zero_runs[states, ranks]
        estimate = rank_states(states, shape, ranks, "cpu").to_dict()
        for rank in range(ranks):
            measured_bytes = tensor_bytes(record, rank if ranks > 1 else None)
            assert {k: estimate[k] for k in STATE_FIELDS} == {k: measured_bytes[k] for k in STATE_FIELDS}


def rank_process(rank: int) -> psutil.Process | None:
    for child in psutil.Process().children(recursive=True):
        try:
            if "revbench.orchestrator.worker" in " ".join(child.cmdline()) and \
                    child.environ().get("RANK") == str(rank) and child.environ().get("WORLD_SIZE") == "2":
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def test_a_rank_that_dies_takes_the_run_down_cleanly(tmp_path: Path) -> None:
    method = "store+adamw-ddp+full"
    suite = Suite(name="death", model=ModelSpec(layers=1), workload=Workload(batch=2, seq=16), methods=[method],
                  device="cpu", ranks=2, steps=1, timeout_s=300)
    run = plan_run(suite, method)
    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("record", execute(run, tmp_path, {})))
    thread.start()
    while (victim := rank_process(1)) is None:
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    thread.join(timeout=120)
    record = box["record"]
    assert record.status == "error"
    assert "rank 1 left no result: it was killed by SIGKILL" in record.error
    assert not [p for p in psutil.Process().children(recursive=True)
                if "revbench.orchestrator.worker" in " ".join(p.cmdline())]


def start_nodes(tmp_path: Path, steps: int = 1, **env: str) -> list[subprocess.Popen]:
    """Two launcher processes, as on two hosts: each runs the same suite (DDP on 2 nodes x 1 CPU rank) into its
    own folder, meeting at a c10d rendezvous on localhost."""
    suite = {"name": "ranks", "model": {"layers": 2}, "workload": {"batch": 2, "seq": 32, "data": "text"},
             "methods": ["store+adamw-ddp+full"], "device": "cpu", "ranks": 1, "nodes": 2, "steps": steps,
             "warmup": 1, "timeout_s": 600}
    (tmp_path / "nodes.yaml").write_text(json.dumps(suite))  # JSON is YAML
    endpoint = f"127.0.0.1:{free_port()}"
    return [subprocess.Popen([sys.executable, "-m", "revbench", "run", str(tmp_path / "nodes.yaml"), "--no-report",
                              "--rdzv-endpoint", endpoint, "--out", str(tmp_path / f"node{n}")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **env})
            for n in range(2)]


def node_records(tmp_path: Path, nodes: list[subprocess.Popen]) -> list[RunRecord]:
    outputs = [node.communicate(timeout=600)[0].decode() for node in nodes]
    records = [list(read_records(tmp_path / f"node{n}")) for n in range(2)]
    assert [len(r) for r in records] == [1, 1], outputs
    return [r[0] for r in records]


def test_two_nodes_meet_at_the_c10d_rendezvous_and_train_like_two_ranks_on_one(ddp_runs: dict,
                                                                               tmp_path: Path) -> None:
    """Each node's record holds both ranks, named by node and host."""
    nodes = start_nodes(tmp_path)
    first, second = node_records(tmp_path, nodes)
    assert [node.returncode for node in nodes] == [0, 0]
    assert first.status == second.status == "ok" and first.run_id == second.run_id
    assert first.config["nodes"] == 2 and first.metrics["ranks"]["count"] == 2
    per_rank = first.metrics["ranks"]["per_rank"]
    assert sorted(entry["node"] for entry in per_rank) == [0, 1] and all(entry["host"] for entry in per_rank)
    assert second.metrics["ranks"]["per_rank"] == per_rank  # every node's record is the whole run
    one_node = ddp_runs[2]
    assert first.losses == pytest.approx(one_node.losses, rel=LOSS_RTOL)
    for rank in (0, 1):
        states = {k: tensor_bytes(first, rank)[k] for k in ("params", "grads", "optimizer")}
        assert states == {k: tensor_bytes(one_node, rank)[k] for k in states}
    table = rank_table(runs_frame(load_records(tmp_path / "node0")))
    assert table["node"].tolist() == [entry["node"] for entry in per_rank]
    assert table["point"].str.endswith("2 nodes × 1 rank").all()


def test_a_rank_that_hangs_on_one_node_ends_the_run_on_every_node(tmp_path: Path) -> None:
    """A frozen rank (a hung host, a cut network) is alive to its torchrun, and its peers would wait in a collective
    for 30 minutes. The peer watch gives up on it after its patience (5 s here): that node's run ends, and once the
    frozen rank runs again it finds its peers gone. Both records say what happened."""
    nodes = start_nodes(tmp_path, steps=50, REVBENCH_PEER_LOST_S="5")
    while (victim := rank_process(1)) is None:
        time.sleep(0.05)
    time.sleep(2.0)  # in the middle of building or training
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 120
        while all(node.poll() is None for node in nodes) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    records = node_records(tmp_path, nodes)
    assert [record.status for record in records] == ["error", "error"], [record.error for record in records]
    assert all(record.duration_s < 180 for record in records), [record.duration_s for record in records]
    errors = " ".join(record.error for record in records)
    assert "rank 0 (error): stopped waiting for its peers: rank 1 stopped answering: no heartbeat" in errors, errors
