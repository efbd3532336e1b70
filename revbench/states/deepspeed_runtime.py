"""The process group of a DeepSpeed or DDP run, and a notice before DeepSpeed's op JIT compiles.

Under a launcher (torchrun, the deepspeed launcher) the rendezvous variables are set, and the group spans its
ranks: gloo on CPU, nccl on CUDA. Without one, DeepSpeed would try MPI discovery (`No module named 'mpi4py'`),
so a single-process rendezvous on a free local port is set up here, and torn down again so that several runs
can share one Python process (pytest, `revbench bench methods`).
"""

from __future__ import annotations

import os
import socket
import sys
from types import ModuleType

import torch


def import_deepspeed(device: torch.device) -> ModuleType:
    """Import DeepSpeed with the accelerator that matches `device` (it is fixed once per process)."""
    if "deepspeed" not in sys.modules and device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator().device_name()
    if accelerator != device.type:
        raise ValueError(f"DeepSpeed's accelerator in this process is {accelerator!r} but the run's device is "
                         f"{device.type!r}; start a new process (with DS_ACCELERATOR={device.type} for CPU)")
    return deepspeed


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


class SingleProcessGroup:
    """The launcher's world where one launched this process, else a world of one; created only where no earlier
    caller made one, and `close()` undoes exactly what `open()` did. DeepSpeed runs open it through
    `deepspeed.init_distributed` (its backend for the accelerator), others (DDP) through torch directly."""

    def __init__(self) -> None:
        self.created = False
        self.via_deepspeed = False
        self._set_env: list[str] = []

    def open(self, deepspeed: ModuleType | None, device: torch.device) -> None:
        if torch.distributed.is_initialized():
            return  # a launcher (torchrun, deepspeed) or the caller owns the group
        # DeepSpeed puts the engine on the accelerator's device LOCAL_RANK.
        defaults = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1",
                    "LOCAL_RANK": str(device.index or 0)}
        for key, value in defaults.items():
            if key not in os.environ:
                os.environ[key] = value
                self._set_env.append(key)
        try:
            if deepspeed is None:
                torch.distributed.init_process_group(backend(device))
            else:
                announce_compiles(["ShareMemCommBuilder"])
                # The backend DeepSpeed picks for its accelerator: gloo on CPU (no oneCCL), nccl on CUDA.
                deepspeed.init_distributed(auto_mpi_discovery=False, verbose=False)
        except BaseException:
            self.close()
            raise
        self.created, self.via_deepspeed = True, deepspeed is not None

    def close(self) -> None:
        if self.created:
            if self.via_deepspeed:
                import deepspeed.comm

                deepspeed.comm.destroy_process_group()
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            self.created = False
        for key in self._set_env:
            os.environ.pop(key, None)
        self._set_env.clear()


def pending_compiles(builder_names: list[str]) -> list[str]:
    """The DeepSpeed ops among `builder_names` that will be JIT-compiled on first use: not prebuilt at install,
    not loaded in this process, and absent from the torch extensions cache."""
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import installed_ops
    from deepspeed.ops.op_builder.builder import OpBuilder
    from torch.utils.cpp_extension import _get_build_directory

    pending = []
    for builder_name in builder_names:
        builder = get_accelerator().create_op_builder(builder_name)
        if builder is None or not builder.is_compatible():
            continue  # this accelerator does not use the op
        name = builder.NAME
        if installed_ops.get(name) or name in OpBuilder._loaded_ops:
            continue
        if not os.path.isfile(os.path.join(_get_build_directory(name, verbose=False), f"{name}.so")):
            pending.append(name)
    return pending


def announce_compiles(builder_names: list[str]) -> None:
    """Say so before DeepSpeed spends a minute compiling, since it prints nothing while it does."""
    for name in pending_compiles(builder_names):
        print(f"[revbench] DeepSpeed is JIT-compiling its {name} op (about a minute, once: the result is cached "
              f"in the torch extensions folder, keyed partly on PATH). See baselines/README.md to prebuild it.",
              file=sys.stderr, flush=True)
