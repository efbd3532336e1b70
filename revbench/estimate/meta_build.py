"""Build a method on the meta device, then make its tensors fake: for libraries that cannot build on fake tensors.

PEFT moves each new adapter to its base layer's device with `Module.to()`, which swaps parameters in place;
torch cannot swap a fake tensor subclass ("Couldn't swap Linear.weight"). Meta tensors are plain tensors, so
PEFT builds on them, with the same modules, shapes and dtypes. Each meta parameter and buffer is then
replaced by a fake tensor of the same shape, dtype and requires_grad on the CPU device, and the optimizer,
still stateless, is pointed at the new parameters. From there the step runs on fake tensors as for any
method.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from revbench.methods import create_method
from revbench.methods.method import Method
from revbench.spec import TrainSpec


def _to_fake(mode: FakeTensorMode, t: torch.Tensor) -> torch.Tensor:
    return mode.fake_tensor_converter.from_meta_and_device(mode, t.detach(), torch.device("cpu"))


def fake_method_from_meta(name: str, spec: TrainSpec, mode: FakeTensorMode) -> Method:
    """Method `name`, prepared on the meta device, with fake CPU tensors of `mode` in place of its meta ones.
    Call outside `mode`: converting reads the meta tensors, which fake mode would refuse as inputs."""
    method = create_method(name, replace(spec, device="meta"))
    method.prepare()
    assert method.model is not None and method.optimizer is not None
    swapped: dict[int, torch.nn.Parameter] = {}
    for module in method.model.modules():
        for key, param in module._parameters.items():
            if param is not None:
                if id(param) not in swapped:  # tied weights stay tied
                    swapped[id(param)] = torch.nn.Parameter(_to_fake(mode, param), requires_grad=param.requires_grad)
                module._parameters[key] = swapped[id(param)]
        for key, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[key] = _to_fake(mode, buffer)
    if method.optimizer.state:
        raise RuntimeError(f"{name}'s optimizer has state before its first step; it cannot be moved to fake tensors")
    for group in method.optimizer.param_groups:
        group["params"] = [swapped[id(p)] for p in group["params"]]
    method.device = torch.device("cpu")
    return method
