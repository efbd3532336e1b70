"""DeepSpeed ZeRO with CPU offload: ZeRO-2 (optimizer offloaded), ZeRO-3 (parameters too), and RevFFN on ZeRO-2.

The ZeRO settings come from an editable JSON file in the top-level `baselines/` folder; the runner fills in what
must match the other methods (batch sizes, precision) and sizes buckets marked "auto". The optimizer is the one
AdamW of `spec.optimizer`, run as DeepSpeed's CPU Adam in AdamW mode on the offloaded float32 partitions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from revbench.measure.categories import StateTensors
from revbench.methods.base import Method
from revbench.methods.distributed import SingleProcessGroup, announce_compiles, import_deepspeed
from revbench.records import project_relative

BASELINES_DIR = Path(__file__).resolve().parents[2] / "baselines"
# Keys that must match every other method, so the runner owns them and a config file may not set them.
RUNNER_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer",
               "scheduler", "bf16", "fp16")


def load_config(path: Path, stage: int, offload_param: bool) -> dict[str, Any]:
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
    wanted = {"offload_optimizer": True, "offload_param": offload_param}
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


def zero_state_tensors(engine: Any) -> StateTensors:
    """DeepSpeed's own model states. The float32 master partitions count as optimizer state, as in the ZeRO paper
    (K = 12 bytes per parameter: master weights, momentum, variance). ZeRO-3's gathered full parameters exist
    only around each layer's use, so the byte accounting sees them as transient (activations)."""
    zero = engine.optimizer
    module_params = list(engine.module.parameters())
    params = [*module_params, *engine.module.buffers()]
    params += [p.ds_tensor for p in module_params if getattr(p, "ds_tensor", None) is not None]  # ZeRO-3 partitions
    params += tensors_in([getattr(zero, name, None) for name in PARAM_BUFFERS])
    masters = tensors_in([getattr(zero, name, None) for name in MASTER_PARTITIONS])
    grads = [t.grad for t in module_params + masters if t.grad is not None]
    grads += tensors_in([getattr(zero, name, None) for name in GRAD_BUFFERS])
    grads += tensors_in([getattr(bucket, "buffer", None) for bucket in getattr(zero, "ipg_buckets", {}).values()])
    states = tensors_in(list(zero.optimizer.state.values()))
    return {"params": params, "grads": grads, "optimizer": masters + states}


class DeepSpeedZero(Method):
    """A ZeRO stage with CPU offload, driven by `engine.backward` and `engine.step`."""

    stage: ClassVar[int]
    offload_param: ClassVar[bool]
    config_name: ClassVar[str]  # the default config file, baselines/<config_name>.json
    precision = ("float32 on CPU; on CUDA bfloat16 parameters and compute, with DeepSpeed's float32 master weights, "
                 "gradient partitions and Adam states in host memory")
    not_estimable = ("DeepSpeed offload keeps float32 master weights, gradient partitions and Adam states in "
                     "host-side flat buffers updated by the compiled CPU Adam op, which fake tensors cannot run")

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.engine: Any = None
        self.group = SingleProcessGroup()
        self.config_path = Path(spec.options.get("config", BASELINES_DIR / f"{self.config_name}.json"))
        self.config: dict[str, Any] = {}
        self.init_seconds = 0.0

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return ("config",)  # path to a DeepSpeed JSON config; default baselines/<config_name>.json

    def prepare(self) -> None:
        deepspeed = import_deepspeed(self.device)
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        config = load_config(self.config_path, self.stage, self.offload_param)
        started = time.perf_counter()
        self.group.open(deepspeed, self.device)
        try:
            model = self.build_model().train()
            self.config = fill_config(config, self.spec.workload.batch, next(model.parameters()).dtype,
                                      model.config.hidden_size)
            announce_compiles(["CPUAdamBuilder"])
            opt = self.spec.optimizer
            trainable = [p for p in model.parameters() if p.requires_grad]
            cpu_adam = DeepSpeedCPUAdam(trainable, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps,
                                        weight_decay=opt.weight_decay, adamw_mode=True)
            self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=cpu_adam,
                                                                     config=self.config)
        except BaseException:
            self.teardown()  # leave no process group behind for the next run in this process
            raise
        self.model = self.engine.module
        self.init_seconds = time.perf_counter() - started

    def train_step(self, input_ids: torch.Tensor) -> torch.Tensor:
        input_ids = input_ids.to(self.device)
        loss = self.engine(input_ids=input_ids, labels=input_ids).loss
        self.engine.backward(loss)
        self.engine.step()
        return loss.detach()

    def state_tensors(self) -> StateTensors:
        assert self.engine is not None, "prepare() first"
        return zero_state_tensors(self.engine)

    def full_parameters(self) -> dict[str, torch.Tensor]:
        if self.stage < 3:
            return super().full_parameters()
        import deepspeed

        params = dict(self.model.named_parameters())
        with deepspeed.zero.GatheredParameters(list(params.values())):
            return {name: p.detach().cpu().clone() for name, p in params.items()}

    def stats(self) -> dict[str, Any]:
        return {"zero_stage": self.stage, "offload_optimizer": "cpu", "offload_param": "cpu" if self.offload_param
                else "none", "config_file": project_relative(self.config_path), "ds_config": self.config,
                "init_seconds": self.init_seconds}

    def teardown(self) -> None:
        if self.engine is not None:
            self.engine.destroy()  # removes ZeRO-3's module hooks and frees the optimizer's buffers
            self.engine = None
        self.group.close()
        super().teardown()


class Zero2Offload(DeepSpeedZero):
    name = "zero2-offload"
    stage = 2
    offload_param = False
    config_name = "zero2-offload"


class Zero3Offload(DeepSpeedZero):
    name = "zero3-offload"
    stage = 3
    offload_param = True
    config_name = "zero3-offload"


class RevFFNZero2Offload(Zero2Offload):
    """RevFFN's reversible blocks (activations) on ZeRO-2 offload (model states): the two save different memory.

    DeepSpeed fixes the trainable set at initialize, so the RevFFN stages that keep one trainable set work
    ("full", "warmup") and "two-stage", which thaws the pretrained weights mid-run, does not.
    """

    name = "revffn-zero2-offload"
    precision = "as revffn, with zero2-offload's float32 master weights and Adam states in host memory on CUDA"

    def __init__(self, spec: Any) -> None:
        from revbench.revffn.schedule import check_stage

        super().__init__(spec)
        self.revffn_stage = spec.options.get("stage", "full")
        check_stage(self.revffn_stage, int(spec.options.get("warmup_steps", 0)))
        if self.revffn_stage == "two-stage":
            raise ValueError("revffn-zero2-offload cannot run RevFFN stage 'two-stage': DeepSpeed fixes the trainable "
                             "parameters at initialize; use stage 'full' or 'warmup'")

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        from revbench.methods.revffn import REVFFN_METHOD_OPTIONS

        return (*super().option_names(), *REVFFN_METHOD_OPTIONS)

    def build_model(self) -> torch.nn.Module:
        from revbench.methods.revffn import build_revffn_model
        from revbench.revffn.schedule import set_trainable

        model = build_revffn_model(self.spec)
        set_trainable(model, everything=self.revffn_stage == "full")
        return model

    def stats(self) -> dict[str, Any]:
        assert self.model is not None, "prepare() first"
        return {**super().stats(), "stage": self.revffn_stage, **self.model.reconstruction_summary()}
