"""One estimate: the step session that can estimate a method (fake tensors, or DeepSpeed's layout model), and the
result, with the device and host figures apart.

A session is built once per method and spec and then stepped at any batch and sequence length, so `--fit`'s
probes and a table of methods pay the model build and the warm-up step once.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace
from typing import Any

from revbench.estimate.depth import (
    EXTRAPOLATE_PAST,
    LADDER,
    RUNG,
    TRACED,
    DepthSession,
    Session,
    at_depth,
    depth_reason,
    step_peak,
)
from revbench.estimate.fake_step import MethodStep
from revbench.estimate.zero_step import ZERO_STATES, ZeroStep
from revbench.measure.categories import TensorBytes
from revbench.methods import parse_method
from revbench.models.zoo import build_config
from revbench.spec import TrainSpec


@dataclass
class Estimate:
    """One method's estimated peak, or why there is none. `tensor_bytes` is what the device holds at its peak;
    `host_bytes` what the method keeps in host memory (DeepSpeed's or FSDP2's offload), None where it keeps nothing
    there."""

    method: str
    status: str  # "ok" or "error"
    tensor_bytes: TensorBytes | None = None
    reason: str | None = None
    seconds: float = 0.0
    parameters: int | None = None  # the model's parameter count, trainable or not
    host_bytes: TensorBytes | None = None
    depth: str = TRACED  # or EXTRAPOLATED from traces at a few small depths (estimate/depth.py)
    depths: tuple[int, ...] = ()  # those depths
    phase_peaks: dict[str | None, int] | None = None  # each step phase's own device peak, in the order they ran
    depth_note: str | None = None  # why a deep stack was traced at its full depth

    @property
    def peak_bytes(self) -> int | None:
        """The device peak."""
        return self.tensor_bytes.total if self.tensor_bytes else None

    @property
    def host_peak_bytes(self) -> int | None:
        """The model states held in host memory at the device's peak, and the activations an offload holds there at
        their own peak (the end of forward): at most this much host memory at any one moment."""
        if self.tensor_bytes is None:
            return None
        return (self.host_bytes.total if self.host_bytes else 0) + self.tensor_bytes.host_activations

    def to_dict(self) -> dict[str, Any]:
        categories = {k: v for k, v in self.tensor_bytes.to_dict().items() if k not in ("method", "total")} \
            if self.tensor_bytes else {}
        return {"method": self.method, "status": self.status, "peak_bytes": self.peak_bytes,
                "host_peak_bytes": self.host_peak_bytes, **categories, "parameters": self.parameters,
                "reason": self.reason, "depth": self.depth, "depths": list(self.depths), "depth_note": self.depth_note,
                "seconds": round(self.seconds, 2)}


def open_session(name: str, spec: TrainSpec, target: str, extrapolate: bool | None = None, ranks: int = 1
                 ) -> Session:
    """The session that estimates `name`: DeepSpeed's layout model for the ZeRO offload model states, fake tensors
    otherwise (LoRA through a meta-device build, 8-bit AdamW through bitsandbytes' state layout). A fake-tensor
    step deeper than EXTRAPOLATE_PAST layers is traced at small depths and extrapolated (`extrapolate` None); True
    extrapolates any depth past the ladder's first rung, False traces the full depth. `ranks`: the world that
    FSDP2 shards over (this process its rank 0, on a fake process group), with `spec`'s batch per rank."""
    step = ZeroStep if parse_method(name).states in ZERO_STATES else functools.partial(MethodStep, ranks=ranks)
    config = build_config(spec.model)
    layers = config.num_hidden_layers
    wanted = layers > EXTRAPOLATE_PAST if extrapolate is None else extrapolate and layers > LADDER[RUNG - 1]
    if not wanted:
        return step(name, spec, target)
    return DepthSession(lambda depth: step(name, at_depth(spec, depth), target), layers, depth_reason(spec, config))


def relative_cost(name: str) -> int:
    """A guess at how long `name`'s estimates take beside a plain step's, to start the longest first: revexact's
    depth ladder holds from 2-3-4 or 3-4-5 layers (about twice the layers of 1-2-3 traced), and LoRA builds on the
    meta device and steps PEFT's wrappers (the presets' fit at A2.7B: lora 7.7 s, revexact 5.0 s, checkpointing
    2.3 s)."""
    method = parse_method(name)
    return (2 if method.activations == "revexact" else 1) * (2 if method.states == "lora" else 1)


def _describe(exc: BaseException) -> str:
    """The error and its causes, one line each joined: torch often wraps the telling one."""
    parts = []
    while exc is not None and len(parts) < 3:
        lines = str(exc).strip().splitlines()
        parts.append(f"{type(exc).__name__}: {lines[0] if lines else ''}")
        exc = exc.__cause__
    return "; caused by ".join(parts)


class Sessions:
    """Sessions by method, for one spec and target: each is built on first use, and a failure is kept."""

    def __init__(self, spec: TrainSpec, target: str, extrapolate: bool | None = None, ranks: int = 1) -> None:
        self.spec, self.target, self.extrapolate, self.ranks = spec, target, extrapolate, ranks
        self._open: dict[str, Session | Estimate] = {}
        self._done: dict[tuple[str, int, int], Estimate] = {}  # a size probed twice (a fit's seed) is stepped once
        self._guessed: dict[tuple[str, int, int], Estimate] = {}
        self.build_seconds: dict[str, float] = {}

    def get(self, name: str) -> Session | Estimate:
        if name not in self._open:
            start = time.perf_counter()
            try:
                self._open[name] = open_session(name, self.spec, self.target, self.extrapolate, self.ranks)
            except (ImportError, RuntimeError, NotImplementedError, TypeError, AssertionError) as exc:
                # A method that is not installed or cannot run on fake tensors says why; a bad spec
                # (ValueError) still propagates.
                self._open[name] = Estimate(name, "error", reason=_describe(exc))
            self.build_seconds[name] = time.perf_counter() - start
        return self._open[name]

    def estimate(self, name: str, batch: int, seq: int, guess: bool = False) -> Estimate:
        """`name`'s estimate at this size; a `guess` may skip the depth ladder's check (DepthSession.guess_peaks)."""
        key = (name, batch, seq)
        if key in self._done:
            return self._done[key]
        if guess:
            if key not in self._guessed:
                self._guessed[key] = self._estimate(name, batch, seq, guess)
            return self._guessed[key]
        self._done[key] = self._estimate(name, batch, seq)
        return self._done[key]

    def _estimate(self, name: str, batch: int, seq: int, guess: bool = False) -> Estimate:
        start = time.perf_counter()
        session = self.get(name)
        if isinstance(session, Estimate):
            return replace(session, seconds=time.perf_counter() - start)
        try:
            guessing = guess and isinstance(session, DepthSession)
            phases = session.guess_peaks(batch, seq) if guessing else session.phase_peaks(batch, seq)
        except (RuntimeError, NotImplementedError, TypeError, AssertionError) as exc:
            return Estimate(name, "error", reason=_describe(exc), seconds=time.perf_counter() - start)
        device, host = split_host(step_peak(phases), session.host)
        return Estimate(name, "ok", tensor_bytes=device, host_bytes=host,
                        seconds=time.perf_counter() - start, parameters=session.parameters,
                        depth=session.how, depths=session.depths, depth_note=session.note,
                        phase_peaks={phase: b.total for phase, b in phases.items()})


def split_host(peak: TensorBytes, host: TensorBytes | None) -> tuple[TensorBytes, TensorBytes | None]:
    """(device, host) bytes at the peak. A layout model (ZeRO) gives its host bytes apart; a fake step that keeps
    states in host memory (FSDP2's CPU offload) counts them in its peak as `host_*`, moved to the host side here."""
    if host is not None or not peak.host:
        return peak, host
    device = replace(peak, params=peak.params - peak.host_params, grads=peak.grads - peak.host_grads,
                     optimizer=peak.optimizer - peak.host_optimizer, host_params=0, host_grads=0, host_optimizer=0)
    return device, TensorBytes(params=peak.host_params, grads=peak.host_grads, optimizer=peak.host_optimizer,
                               activations=0, method=f"{peak.method} host")


def estimate_method(name: str, spec: TrainSpec, target: str = "cuda", extrapolate: bool | None = None,
                    ranks: int = 1) -> Estimate:
    """Estimate the peak bytes of one measured step of `name` on `spec` for device kind `target`; for a sharding
    FSDP2 composition, of rank 0 of `ranks` ranks each stepping `spec`'s batch."""
    return Sessions(spec, target, extrapolate, ranks).estimate(name, spec.workload.batch, spec.workload.seq)
