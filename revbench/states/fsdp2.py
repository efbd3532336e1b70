"""`fsdp2` and `fsdp2-offload`: PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`), the default of torchtitan
and torchtune for full fine-tuning on several GPUs.

Each decoder layer is one FSDP unit, and the root (embeddings, final norm, LM head) another: a layer's weights are
all-gathered just before it runs and freed again after it (`reshard_after_forward`, on by default), its gradients
reduce-scattered as backward leaves it, and AdamW steps each rank's shard of parameters and states. The world of
one included: one rank and N ranks run the same code, so a per-rank figure at N = 1 compares with N > 1.

Options: `reshard_after_forward` (true, or false to keep each layer gathered from forward to backward: less
communication, the gathered weights of every layer live at the peak), `param_dtype` and `reduce_dtype`
(`MixedPrecisionPolicy`: the dtype layers compute and gradients reduce in, e.g. bfloat16 over float32 shards; the
model's dtype by default). `fsdp2-offload` adds `CPUOffloadPolicy`: shards, gradients and AdamW states stay in host
memory, each layer's weights go to the device only while gathered, and AdamW steps on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from revbench.measure.categories import HOST, StateTensors, default_state_tensors
from revbench.models.dtypes import parse_dtype
from revbench.states.base import ModelStates
from revbench.states.deepspeed_runtime import SingleProcessGroup

REVERSIBLE = ("revffn", "revexact")


def local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's shard on this rank (the tensor that holds its memory); a plain tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


def truthy(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes", "on"):
        return True
    if str(value).lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"option {name} must be true or false, got {value!r}")


class FSDP2(ModelStates):
    name = "fsdp2"
    option_names = ("reshard_after_forward", "param_dtype", "reduce_dtype")
    precision = "the model's dtype for shards, gradients and AdamW states; param_dtype/reduce_dtype to compute and " \
                "reduce in another (FSDP2's MixedPrecisionPolicy)"
    data_parallel = "parameters, gradients and AdamW states sharded over the ranks (fully_shard per decoder layer)"
    offload = False

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        options = spec.options
        self.reshard_after_forward = truthy(options.get("reshard_after_forward", True), "reshard_after_forward")
        self.param_dtype = parse_dtype(options["param_dtype"]) if options.get("param_dtype") else None
        self.reduce_dtype = parse_dtype(options["reduce_dtype"]) if options.get("reduce_dtype") else None
        self.group = SingleProcessGroup()
        self.units = 0

    def refuses(self, activations: str, loss: str) -> str | None:
        if activations in REVERSIBLE:
            # Tried: RevFFN's stack then meets sharded DTensor weights outside a gathered layer (an error), and
            # revexact's losses drift from plain AdamW's from the second step (its gradients miss the shards).
            return (f"the {activations} stack runs each layer again inside its own backward (to rebuild its input) "
                    f"and hands each layer's gradients off itself, outside the module hooks by which FSDP2 gathers a "
                    f"layer's weights and reduce-scatters its gradients")
        return None

    def setup(self, model: nn.Module) -> Callable[..., Any]:
        from torch._subclasses.fake_tensor import unset_fake_temporarily
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        device = torch.device(self.spec.device)
        self.group.open(None, device)
        try:
            # The mesh is bookkeeping (the ranks' ids), never a tensor of the step: built outside the fake-tensor
            # mode an estimate runs in.
            with unset_fake_temporarily():
                mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
            precision = MixedPrecisionPolicy(param_dtype=self.param_dtype, reduce_dtype=self.reduce_dtype)
            policy = {"mesh": mesh, "mp_policy": precision,
                      "offload_policy": CPUOffloadPolicy(pin_memory=device.type == "cuda") if self.offload
                      else OffloadPolicy()}
            layers = decoder_layers(model)
            for layer in layers:
                fully_shard(layer, reshard_after_forward=self.reshard_after_forward, **policy)
            # The root's weights (embeddings, LM head) are needed again as soon as backward starts: kept gathered.
            fully_shard(model, reshard_after_forward=False, **policy)
        except BaseException:
            self.group.close()
            raise
        self.units = len(layers) + 1
        self.model = model
        self.optimizer = self.make_optimizer(list(model.parameters()))
        return model

    def state_tensors(self) -> StateTensors:
        states = default_state_tensors(self.model, self.optimizer)
        shards = {category: [local(t) for t in tensors] for category, tensors in states.items()}
        if self.offload:  # the shards, their gradients and AdamW's states live in host memory
            shards[HOST] = [t for category in ("params", "grads", "optimizer") for t in shards[category]
                            if t.device.type == "cpu"]
        return shards

    def full_parameters(self) -> dict[str, torch.Tensor]:
        """Every parameter whole: an all-gather, so every rank must call it."""
        assert self.model is not None, "setup() first"
        return {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone()
                for name, p in self.model.named_parameters()}

    def stats(self) -> dict[str, Any]:
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        return {"world_size": world, "data_parallel": self.data_parallel, "fsdp_units": self.units,
                "reshard_after_forward": self.reshard_after_forward, "cpu_offload": self.offload,
                "param_dtype": str(self.param_dtype) if self.param_dtype else None,
                "reduce_dtype": str(self.reduce_dtype) if self.reduce_dtype else None}

    def teardown(self) -> None:
        self.group.close()
        super().teardown()


class FSDP2Offload(FSDP2):
    name = "fsdp2-offload"
    data_parallel = "parameter shards, gradients and AdamW states sharded over the ranks, in host memory"
    offload = True


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a Hugging Face causal LM (`model.model.layers`), each one FSDP unit."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise TypeError(f"FSDP2 shards a causal LM's decoder layers (model.model.layers); {type(model).__name__} "
                        f"has none")
    return list(layers)
