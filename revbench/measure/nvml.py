"""Device-used memory from NVML (nvidia-ml-py), sampled during the steps: what nvidia-smi would show."""

from __future__ import annotations

import os
from typing import Any

import torch

from revbench.measure.sampler import PeakSampler
from revbench.measure.unavailable import unavailable

FIELDS = ("device_used_peak_bytes", "process_used_peak_bytes")


def _nvml():
    import pynvml

    pynvml.nvmlInit()
    return pynvml


def _process_used(pynvml: Any, handle: Any, pid: int) -> int:
    try:
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except pynvml.NVMLError:
        return 0
    return sum(p.usedGpuMemory or 0 for p in procs if p.pid == pid)


class NvmlMemory:
    """Peak device-used and (where the driver reports it) per-process used bytes while a block runs."""

    def __init__(self, device: torch.device | str, interval_s: float = 0.01) -> None:
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.reason: str | None = None
        self._device_sampler: PeakSampler | None = None
        self._process_sampler: PeakSampler | None = None

    def __enter__(self) -> NvmlMemory:
        if self.device.type != "cuda":
            self.reason = f"NVML reads NVIDIA GPUs only; the run is on {self.device.type}"
            return self
        try:
            pynvml = _nvml()
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:  # NVMLError_LibraryNotFound, driver mismatch, no device
            self.reason = f"NVML unavailable: {type(exc).__name__}: {exc}"
            return self
        pid = os.getpid()
        self._device_sampler = PeakSampler(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used, self.interval_s)
        self._process_sampler = PeakSampler(lambda: _process_used(pynvml, handle, pid), self.interval_s)
        self._device_sampler.start()
        self._process_sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for sampler in (self._device_sampler, self._process_sampler):
            if sampler is not None:
                sampler.stop()

    def result(self) -> dict[str, Any]:
        if self._device_sampler is None or self._process_sampler is None:
            return unavailable(self.reason or "NVML was not started", *FIELDS)
        process_peak = self._process_sampler.peak
        return {
            "device_used_peak_bytes": self._device_sampler.peak,
            # Containers and some drivers hide per-process figures; 0 then means "not reported".
            "process_used_peak_bytes": process_peak or None,
        }
