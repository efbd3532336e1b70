"""The environment stamp every record carries: what ran, on what, when.

torch is not imported for the stamp (`revbench env` answers at once): its versions come from the installed
package, and the GPU from NVML, or from torch where a worker has imported it already.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import revbench


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(revbench.__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _torch_cuda() -> str | None:
    """torch's CUDA version (`torch.version.cuda`), read from its version.py without importing torch."""
    if "torch" in sys.modules:
        return sys.modules["torch"].version.cuda
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return None
    try:
        tree = ast.parse((Path(spec.origin).parent / "version.py").read_text())
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(
            node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "cuda" and isinstance(node.value, ast.Constant):
            return node.value.value
    return None


def _visible(count: int) -> list[int]:
    """The NVML indices of the devices CUDA_VISIBLE_DEVICES leaves visible (all when unset or by UUID)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(count))
    indices = []
    for item in visible.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) >= count:
            break  # CUDA stops at the first invalid entry
        indices.append(int(item))
    return indices


def _gpu_nvml() -> dict[str, Any] | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        indices = _visible(pynvml.nvmlDeviceGetCount())
        if not indices:
            return None
        handle = pynvml.nvmlDeviceGetHandleByIndex(indices[0])
        name = pynvml.nvmlDeviceGetName(handle)
        return {"gpu": name.decode() if isinstance(name, bytes) else name, "gpu_count": len(indices),
                "gpu_memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                "driver": pynvml.nvmlSystemGetDriverVersion()}
    except Exception:  # no driver, no NVML library, a container without devices: no GPU to report
        return None


def _gpu() -> dict[str, Any]:
    if "torch" not in sys.modules:
        return _gpu_nvml() or {"gpu": None, "gpu_count": 0, "gpu_memory_bytes": None, "driver": None}
    import torch

    if not torch.cuda.is_available():
        return {"gpu": None, "gpu_count": 0, "gpu_memory_bytes": None, "driver": None}
    props = torch.cuda.get_device_properties(0)
    driver = None
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # the driver version is optional; NVML may be absent in containers
        driver = None
    return {"gpu": props.name, "gpu_count": torch.cuda.device_count(), "gpu_memory_bytes": props.total_memory,
            "driver": driver}


def device_kind(device: str) -> str:
    """What records may be compared across: 'cpu', or 'cuda:<GPU name>'."""
    import torch

    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


def environment_stamp() -> dict[str, Any]:
    return {
        "revbench": revbench.__version__,
        "python": platform.python_version(),
        "torch": sys.modules["torch"].__version__ if "torch" in sys.modules else _version("torch"),
        "transformers": _version("transformers"),
        "deepspeed": _version("deepspeed"),
        "peft": _version("peft"),
        "cuda": _torch_cuda(),
        **_gpu(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
