"""DeepSpeed ZeRO, as the Hugging Face Trainer and LLaMA-Factory run it: `zero1`, `zero2` and `zero3` keep every
state on the device, partitioned over the ranks (ZeRO-1 the float32 master weights and AdamW states, ZeRO-2 the
gradients too, ZeRO-3 the parameters too); `zero2-offload` and `zero3-offload` keep the float32 master weights,
gradient partitions and Adam states in host memory, ZeRO-3's offload the parameter partitions too.

The ZeRO settings come from an editable JSON file in the top-level `baselines/` folder; the runner fills in what
must match the other methods (batch sizes, precision) and sizes buckets marked "auto". The optimizer is the one
AdamW of `spec.optimizer`: torch's, on the device's float32 partitions, or DeepSpeed's CPU Adam in AdamW mode on
the offloaded ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from revbench.measure.categories import HOST, StateTensors
from revbench.ranks import world_size
from revbench.records import project_relative
from revbench.states.base import ModelStates
from revbench.states.deepspeed_runtime import SingleProcessGroup, announce_compiles, import_deepspeed

BASELINES_DIR = Path(__file__).resolve().parents[2] / "baselines"
# Keys that must match every other method, so the runner owns them and a config file may not set them.
RUNNER_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer",
               "scheduler", "bf16", "fp16")


def load_config(path: Path, stage: int, offload_optimizer: bool, offload_param: bool) -> dict[str, Any]:
    """Read a baselines JSON file and check it describes the method it is used for."""
    if not path.is_file():
        raise FileNotFoundError(f"DeepSpeed config {str(path)!r} does not exist")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"DeepSpeed config {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("zero_optimization"), dict):
        raise ValueError(f"DeepSpeed config {str(path)!r} must be a JSON object with a zero_optimization object")
    owned = sorted(set(RUNNER_KEYS) & set(config))
    if owned:
        raise ValueError(f"DeepSpeed config {str(path)!r} sets {', '.join(owned)}; revbench fills these in from the "
                         f"run's spec so that every method trains alike: remove them")
    zero = config["zero_optimization"]
    if zero.get("stage") != stage:
        raise ValueError(f"DeepSpeed config {str(path)!r} must have zero_optimization.stage {stage}, "
                         f"got {zero.get('stage')!r}")
    wanted = {"offload_optimizer": offload_optimizer, "offload_param": offload_param}
    for key, on in wanted.items():
        device = (zero.get(key) or {}).get("device", "none")
        if (device == "cpu") != on:
            raise ValueError(f"DeepSpeed config {str(path)!r}: zero_optimization.{key}.device must be "
                             f"{'cpu' if on else 'none'} for this method, got {device!r}")
    return config


def fill_config(config: dict[str, Any], batch: int, dtype: torch.dtype, hidden: int) -> dict[str, Any]:
    """The runner's part: batch sizes, precision, and "auto" bucket sizes (Hugging Face's rules, from hidden size)."""
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"DeepSpeed methods run float32 or bfloat16, not {dtype}")
    auto = {"reduce_bucket_size": hidden * hidden, "allgather_bucket_size": hidden * hidden,
            "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
            "stage3_param_persistence_threshold": 10 * hidden}
    zero = {key: auto[key] if value == "auto" and key in auto else value
            for key, value in config["zero_optimization"].items()}
    return {**config, "zero_optimization": zero, "train_micro_batch_size_per_gpu": batch,
            "gradient_accumulation_steps": 1, "bf16": {"enabled": dtype == torch.bfloat16}}


def tensors_in(value: Any) -> list[torch.Tensor]:
    """Every tensor in a (nested) list, tuple or dict, or the value itself."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        value = value.values()
    if isinstance(value, Iterable) and not isinstance(value, str):
        return [t for item in value for t in tensors_in(item)]
    return []


# Where DeepSpeed's ZeRO optimizers (stage 1/2: DeepSpeedZeroOptimizer, stage 3: DeepSpeedZeroOptimizer_Stage3)
# keep their persistent buffers. Attributes a version lacks are skipped.
PARAM_BUFFERS = ("bit16_groups_flat", "param_buffer_of_bit16_for_cpu_offload_groups", "fp16_partitioned_groups_flat",
                 "lp_param_buffer", "param_groups_fp16_flat_cpu_memory")
MASTER_PARTITIONS = ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat")
GRAD_BUFFERS = ("grads_in_partition", "ipg_buffer", "temp_grad_buffer_for_cpu_offload",
                "temp_grad_buffer_for_gpu_offload", "averaged_gradients", "accumulated_grads_in_cpu",
                "grad_partitions_flat_buffer")
# The buffers DeepSpeed places on the offload device (host memory) when the optimizer is offloaded: the bit16
# staging copy of updated partitions, and the CPU gradient buffers (ZeRO-2's per-parameter accumulators, ZeRO-3's
# flat gradient partitions). With the parameters offloaded too (ZeRO-3), their flat CPU store and partitions.
HOST_BUFFERS = ("param_buffer_of_bit16_for_cpu_offload_groups", "temp_grad_buffer_for_cpu_offload",
                "accumulated_grads_in_cpu", "grad_partitions_flat_buffer")
HOST_PARAM_BUFFERS = ("param_groups_fp16_flat_cpu_memory",)
# The DeepSpeed op every ZeRO run loads on CPU ranks (CPU Adam besides, where the optimizer is offloaded).
OPS = ("ShareMemCommBuilder",)


def zero_state_tensors(engine: Any, offload_optimizer: bool, offload_param: bool) -> StateTensors:
    """DeepSpeed's own model states. The float32 master partitions count as optimizer state, as in the ZeRO paper
    (K = 12 bytes per parameter: master weights, momentum, variance). ZeRO-3's gathered full parameters exist
    only around each layer's use, so the byte accounting sees them as transient (activations).

    `host` lists what CPU offload keeps in host memory: master partitions and their gradients, Adam states, the
    CPU gradient and staging buffers, and with `offload_param` the parameter partitions."""
    zero = engine.optimizer
    module_params = list(engine.module.parameters())
    partitions = [p.ds_tensor for p in module_params if getattr(p, "ds_tensor", None) is not None]  # ZeRO-3
    params = [*module_params, *engine.module.buffers(), *partitions]
    params += tensors_in([getattr(zero, name, None) for name in PARAM_BUFFERS])
    masters = tensors_in([getattr(zero, name, None) for name in MASTER_PARTITIONS])
    master_grads = [t.grad for t in masters if t.grad is not None]
    grads = [t.grad for t in module_params if t.grad is not None] + master_grads
    grads += tensors_in([getattr(zero, name, None) for name in GRAD_BUFFERS])
    grads += tensors_in([getattr(bucket, "buffer", None) for bucket in getattr(zero, "ipg_buckets", {}).values()])
    states = tensors_in(list(zero.optimizer.state.values()))
    host: list[torch.Tensor] = []
    if offload_optimizer:
        host += masters + master_grads + states + tensors_in([getattr(zero, name, None) for name in HOST_BUFFERS])
    if offload_param:
        host += partitions + tensors_in([getattr(zero, name, None) for name in HOST_PARAM_BUFFERS])
    return {"params": params, "grads": grads, "optimizer": masters + states, HOST: host}


class Zero(ModelStates):
    """A ZeRO stage, driven by `engine.backward` and `engine.step`: on the device, or with CPU offload."""

    stage: ClassVar[int]
    offload_optimizer: ClassVar[bool] = False
    offload_param: ClassVar[bool] = False
    option_names = ("config",)  # path to a DeepSpeed JSON config; default baselines/<name>.json
    precision = ("float32 on CPU; on CUDA bfloat16 parameters and compute, with DeepSpeed's float32 master weights "
                 "and AdamW states")

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.device = torch.device(spec.device)
        self.engine: Any = None
        self.group = SingleProcessGroup()
        self.config_path = Path(spec.options.get("config", BASELINES_DIR / f"{self.name}.json"))
        self.config: dict[str, Any] = {}
        self.init_seconds = 0.0

    @classmethod
    def load_config(cls, path: Path | None = None) -> dict[str, Any]:
        """The technique's DeepSpeed config file (its shipped one by default), checked against the technique."""
        return load_config(path or BASELINES_DIR / f"{cls.name}.json", cls.stage, cls.offload_optimizer,
                           cls.offload_param)

    def ops(self) -> tuple[str, ...]:
        """The DeepSpeed ops a run loads, JIT-compiled on first use unless prebuilt: the shared-memory collectives
        that `deepspeed.init_distributed` loads on CPU ranks, and CPU Adam where the optimizer is offloaded."""
        return ("CPUAdamBuilder", *OPS) if self.offload_optimizer else OPS

    def prebuild(self) -> None:
        """Load (JIT-compiling once, about a minute each) the ops the run uses, so no measured window holds the
        compiler (its processes count in the host figure: 3.38 GiB on a fresh machine's zero2-offload smoke run)."""
        import_deepspeed(self.device)
        from deepspeed.accelerator import get_accelerator

        announce_compiles(list(self.ops()))
        for name in self.ops():
            builder = get_accelerator().create_op_builder(name)
            if builder is not None and builder.is_compatible():  # the shared-memory op is the CPU accelerator's
                builder.load()

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        if not self.offload_optimizer:
            return super().make_optimizer(params)  # torch's AdamW on the float32 partitions DeepSpeed hands it
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        announce_compiles(["CPUAdamBuilder"])
        return DeepSpeedCPUAdam(params, **self.spec.optimizer.hyperparameters(), adamw_mode=True)

    def setup(self, model: nn.Module) -> Callable[..., Any]:
        deepspeed = import_deepspeed(self.device)
        config = self.load_config(self.config_path)
        started = time.perf_counter()
        self.group.open(deepspeed, self.device)
        try:
            # workload.batch is the global batch; each rank trains on its share (revbench.ranks).
            self.config = fill_config(config, self.spec.workload.batch // world_size(), next(model.parameters()).dtype,
                                      model.config.hidden_size)
            optimizer = self.make_optimizer([p for p in model.parameters() if p.requires_grad])
            self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                                     config=self.config)
        except BaseException:
            self.teardown()  # leave no process group behind for the next run in this process
            raise
        self.model = self.engine.module
        self.init_seconds = time.perf_counter() - started
        return self.engine

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()

    def state_tensors(self) -> StateTensors:
        assert self.engine is not None, "setup() first"
        return zero_state_tensors(self.engine, self.offload_optimizer, self.offload_param)

    def full_parameters(self) -> dict[str, torch.Tensor]:
        if self.stage < 3:
            return super().full_parameters()
        import deepspeed

        params = dict(self.model.named_parameters())
        with deepspeed.zero.GatheredParameters(list(params.values())):
            return {name: p.detach().cpu().clone() for name, p in params.items()}

    def stats(self) -> dict[str, Any]:
        return {"zero_stage": self.stage, "data_parallel": self.data_parallel,
                "offload_optimizer": "cpu" if self.offload_optimizer else "none",
                "offload_param": "cpu" if self.offload_param else "none",
                "config_file": project_relative(self.config_path), "ds_config": self.config,
                "init_seconds": self.init_seconds}

    def teardown(self) -> None:
        if self.engine is not None:
            self.engine.destroy()  # removes ZeRO-3's module hooks and frees the optimizer's buffers
            self.engine = None
        self.group.close()
        super().teardown()


class Zero1(Zero):
    name = "zero1"
    data_parallel = "parameters and gradients replicated; float32 master weights and AdamW states partitioned"
    stage = 1


class Zero2(Zero):
    name = "zero2"
    data_parallel = "parameters replicated; gradients, float32 master weights and AdamW states partitioned"
    stage = 2


class Zero3(Zero):
    name = "zero3"
    data_parallel = "parameters, gradients, float32 master weights and AdamW states partitioned"
    stage = 3


class ZeroOffload(Zero):
    """ZeRO with the optimizer (and for ZeRO-3 the parameters) offloaded to host memory, updated by CPU Adam."""

    offload_optimizer = True
    precision = ("float32 on CPU; on CUDA bfloat16 parameters and compute, with DeepSpeed's float32 master weights, "
                 "gradient partitions and Adam states in host memory")
    uses_adamw_implementation = False  # DeepSpeed's CPU Adam does the update


class Zero2Offload(ZeroOffload):
    name = "zero2-offload"
    data_parallel = Zero2.data_parallel
    stage = 2


class Zero3Offload(ZeroOffload):
    name = "zero3-offload"
    data_parallel = Zero3.data_parallel
    stage = 3
    offload_param = True


ZERO_TECHNIQUES: dict[str, type[Zero]] = {c.name: c for c in (Zero1, Zero2, Zero3, Zero2Offload, Zero3Offload)}
