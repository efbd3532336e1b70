"""Scale-out without launching ranks: the global batch split, the refusals made before any worker starts, the
torchrun command line (one node, or several through the c10d rendezvous), and the merge of the ranks' outcomes
into one record."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch

from revbench.commands.args import endpoint
from revbench.data import Workload
from revbench.models import ModelSpec
from revbench.orchestrator import Suite, SuiteError, plan_run
from revbench.orchestrator.launch import worker_command, worker_env
from revbench.orchestrator.merge import failure, merge_outcomes, torchrun_exits
from revbench.orchestrator.outcomes import rank_result
from revbench.orchestrator.plan import world_size
from revbench.orchestrator.runner import Sweep
from revbench.ranks import rank_batch
from revbench.records import run_id


def suite(method: str, ranks: int = 2, batch: int = 2, **fields) -> Suite:
    return Suite(name="s", model=ModelSpec(layers=1), workload=Workload(batch=batch, seq=16), methods=[method],
                 device=fields.pop("device", "cpu"), ranks=ranks, steps=1, **fields)


def test_each_rank_takes_its_equal_slice_of_the_global_batch() -> None:
    batch = torch.arange(12).reshape(4, 3)
    slices = [rank_batch(batch, r, 2) for r in range(2)]
    assert torch.equal(torch.cat(slices), batch)  # together the ranks see exactly the global batch
    assert torch.equal(slices[1], batch[2:])
    assert torch.equal(rank_batch(batch, 0, 1), batch)
    with pytest.raises(ValueError, match="global batch and must split evenly over 3 ranks"):
        rank_batch(batch, 0, 3)


@pytest.mark.parametrize("method", ["zero2-offload", "zero3-offload", "store+adamw-ddp+full",
                                    "checkpoint+adamw-ddp+full", "revffn+adamw-ddp+full", "revffn-zero2-offload"])
def test_sharding_methods_plan_on_two_ranks_through_torchrun(method: str, tmp_path: Path) -> None:
    run = plan_run(suite(method), method)
    assert world_size(run.config) == 2 and run.config["ranks"] == 2
    assert "2 ranks" in run.point
    command = worker_command(run, tmp_path / "spec", tmp_path / "result.json", tmp_path / "progress")
    assert command[1:5] == ["-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone"]
    env = worker_env(run)
    assert env["DS_ACCELERATOR"] == "cpu" and "OMP_NUM_THREADS" in env
    assert env.get("WORLD_SIZE") == os.environ.get("WORLD_SIZE")  # torchrun sets the rendezvous, not the parent


@pytest.mark.parametrize("method", ["standard", "checkpointing", "revffn", "lora", "store+adamw-in-backward+full",
                                    "store+adamw-8bit+full"])
def test_methods_that_cannot_shard_are_refused_before_any_worker(method: str) -> None:
    with pytest.raises(SuiteError, match=r"cannot run on 2 ranks.*stay whole and unsynchronised.*adamw-ddp"):
        plan_run(suite(method), method)


def test_a_global_batch_that_does_not_split_is_refused() -> None:
    with pytest.raises(SuiteError, match=r"workload.batch 3 is the global batch and must split evenly over 2"):
        plan_run(suite("zero2-offload", batch=3), "zero2-offload")


def test_rank_counts_the_device_cannot_take_are_refused() -> None:
    with pytest.raises(SuiteError, match=r"gpus: asks for 2 GPUs.*--set ranks=2 for 2 CPU ranks"):
        plan_run(suite("zero2-offload", ranks=1, gpus=2), "zero2-offload")
    if not torch.cuda.is_available():
        return
    with pytest.raises(SuiteError, match=r"ranks: counts CPU ranks.*set gpus=2"):
        plan_run(suite("zero2-offload", device="cuda"), "zero2-offload")


def test_revffn_two_stage_is_refused_under_ddp() -> None:
    method = "revffn+adamw-ddp+full"
    with pytest.raises(SuiteError, match="DeepSpeed and DDP fix the trainable parameters"):
        plan_run(suite(method, options={"revffn": {"stage": "two-stage", "warmup_steps": 1}}), method)


@pytest.mark.parametrize("method", ["revffn+zero3+full", "revffn+zero3-offload+full"])
def test_revffn_on_zero3_over_several_ranks_is_refused_before_it_deadlocks(method: str) -> None:
    """Both hung at 2 CPU ranks until their timeout (one rank reduce-scattering, the other gathering); one rank
    runs (test_methods_deepspeed.py), and revexact on ZeRO-3 and RevFFN on ZeRO-2 run at 2 (test_scale_out_ranks.py
    and by hand)."""
    with pytest.raises(SuiteError, match=r"cannot run on 2 ranks: RevFFN's backward deadlocks on ZeRO-3.*ZeRO-2"):
        plan_run(suite(method), method)
    assert plan_run(suite(method, ranks=1), method).config["ranks"] == 1
    assert plan_run(suite("revexact+zero3+full"), "revexact+zero3+full").config["ranks"] == 2


def test_one_rank_runs_as_a_single_process() -> None:
    run = plan_run(suite("zero2-offload", ranks=1), "zero2-offload")
    assert worker_command(run, Path("s"), Path("r"), Path("p"))[1:3] == ["-m", "revbench.orchestrator.worker"]
    assert worker_env(run)["WORLD_SIZE"] == "1"
    assert rank_result(Path("/t/result.json"), 0, 1) == Path("/t/result.json")
    assert rank_result(Path("/t/result.json"), 1, 2) == Path("/t/result.rank1.json")


def rank_outcome(loss: float, total: int, seconds: float, status: str = "ok", error: str | None = None) -> dict:
    tensor_bytes = {"params": total // 2, "grads": total // 2, "total": total, "phase": "backward"}
    metrics = {"step_seconds": [seconds], "step_time_s": {"median": seconds},
               "memory": {"tensor_bytes": tensor_bytes, "host": {"peak_rss_bytes": 1000}}}
    return {"status": status, "error": error, "env": {"rank": loss}, "losses": [loss, loss / 2],
            "metrics": metrics if status == "ok" else {}, "method_stats": {"zero_stage": 3}}


def test_ranks_merge_into_one_record_with_per_rank_max_and_sum() -> None:
    merged = merge_outcomes([rank_outcome(2.0, 100, 0.5), rank_outcome(4.0, 120, 0.7)], {}, 8, 256)
    assert merged["status"] == "ok" and merged["losses"] == [3.0, 1.5]  # the global batch's mean loss
    metrics = merged["metrics"]
    assert metrics["step_seconds"] == [0.7]  # the slowest rank
    assert metrics["samples_per_s"] == pytest.approx(8 / 0.7)  # every rank's samples
    assert metrics["memory"]["tensor_bytes"]["total"] == 120  # the peak rank's figures
    ranks = metrics["ranks"]
    assert ranks["count"] == 2 and ranks["peak_rank"] == 1
    assert ranks["max"]["tensor_bytes"] == {"params": 60, "grads": 60, "total": 120}
    assert ranks["sum"]["tensor_bytes"]["total"] == 220 and ranks["sum"]["host"]["peak_rss_bytes"] == 2000
    assert [r["memory"]["tensor_bytes"]["total"] for r in ranks["per_rank"]] == [100, 120]
    assert [(r["node"], r["host"]) for r in ranks["per_rank"]] == [(0, None), (0, None)]  # outcomes without a node
    assert merged["method_stats"] == {"zero_stage": 3, "ranks": 2}


def test_runs_over_nodes_meet_at_the_rendezvous_under_their_run_id(tmp_path: Path) -> None:
    run = plan_run(suite("store+adamw-ddp+full", ranks=2, nodes=2, batch=4), "store+adamw-ddp+full")
    assert world_size(run.config) == 4 and run.config["nodes"] == 2
    assert "2 nodes × 2 ranks" in run.point
    command = worker_command(run, tmp_path / "spec", tmp_path / "result.json", tmp_path / "progress",
                             "10.0.0.1:29400")
    assert command[1:8] == ["-m", "torch.distributed.run", "--nproc-per-node=2", "--nnodes=2", "--rdzv-backend=c10d",
                            "--rdzv-endpoint=10.0.0.1:29400", f"--rdzv-id={run.run_id}"]
    assert "--standalone" not in command
    with pytest.raises(ValueError, match="spans 2 nodes and needs a rendezvous endpoint"):
        worker_command(run, tmp_path / "spec", tmp_path / "result.json", tmp_path / "progress")
    # The global batch splits over every rank of every node.
    with pytest.raises(SuiteError, match="must split evenly over 4 ranks"):
        plan_run(suite("store+adamw-ddp+full", ranks=2, nodes=2, batch=2), "store+adamw-ddp+full")


def test_one_node_keeps_the_run_ids_it_had_before_nodes() -> None:
    run = plan_run(suite("zero2-offload"), "zero2-offload")
    assert run.config["nodes"] == 1
    before = {k: v for k, v in run.config.items() if k not in ("nodes", "timeout_s")}
    assert run.run_id == run_id(run.suite, run.method, before, 0)


def test_a_sweep_over_nodes_needs_a_rendezvous_and_one_node_refuses_it(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="spans nodes=2: start the same command on every node with --rdzv-endpoint"):
        Sweep(suite("store+adamw-ddp+full", ranks=1, nodes=2), tmp_path)
    with pytest.raises(SuiteError, match="--rdzv-endpoint joins runs over several nodes, but suite 's' has nodes=1"):
        Sweep(suite("store+adamw-ddp+full"), tmp_path, rendezvous="127.0.0.1:29400")
    with pytest.raises(ValueError, match="nodes: must be >= 1, got 0"):
        suite("store+adamw-ddp+full", nodes=0)


@pytest.mark.parametrize("text", ["10.0.0.1", "10.0.0.1:", ":29400", "host:0", "host:65536", "host:port", "[]:29400"])
def test_a_rendezvous_endpoint_must_be_host_and_port(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected HOST:PORT with a port in 1-65535"):
        endpoint(text)
    assert endpoint("node-0.cluster:29400") == "node-0.cluster:29400" and endpoint("[::1]:29400") == "[::1]:29400"


TORCHRUN_LOG = """torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
Root Cause (first observed failure):
[0]:
  time      : 2026-11-29_20:00:00
  host      : box
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 4242)
  error_file: <N/A>
"""


def test_a_dead_rank_is_named_with_why() -> None:
    assert torchrun_exits(TORCHRUN_LOG) == {1: -9}
    merged = merge_outcomes([rank_outcome(2.0, 100, 0.5), None], torchrun_exits(TORCHRUN_LOG), 8, 256)
    assert merged["status"] == "error"
    assert merged["error"] == ("rank 1 left no result: it was killed by SIGKILL (the kernel's OOM killer sends "
                               "SIGKILL when host memory runs out)")
    assert merge_outcomes([None, None], {}, 8, 256) is None
    _, error = failure([None, None], {0: -15, 1: -9})
    assert error.startswith("rank 1 left no result: it was killed by SIGKILL")
    assert error.endswith("rank 0 left no result: it was stopped by torchrun (SIGTERM) when another rank failed")


def test_an_oom_on_one_rank_outranks_the_echo_on_the_others() -> None:
    merged = merge_outcomes([rank_outcome(2.0, 0, 0, "error", "RuntimeError: Connection closed by peer"),
                             rank_outcome(2.0, 0, 0, "oom", "OutOfMemoryError: CUDA out of memory")], {}, 8, 256)
    assert merged["status"] == "oom"
    assert merged["error"] == ("rank 0 (error): RuntimeError: Connection closed by peer; "
                               "rank 1 (oom): OutOfMemoryError: CUDA out of memory")
