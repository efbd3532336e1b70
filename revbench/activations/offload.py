"""`offload-activations` and `checkpoint-offload`: what a decoder layer saves for backward waits in host memory.

torchtune's OffloadActivations, per decoder layer: `saved_tensors_hooks` copy each tensor a layer saves to host
memory in forward and bring it back when backward unpacks it. With `checkpoint` (`checkpoint-offload`) a layer saves
only its input, through the checkpoint's own save, which these hooks see from outside the checkpoint (the recompute's
inner saves are the checkpoint's): only the boundaries move, as Arctic Long Sequence Training (arXiv 2506.13996) and
Hugging Face's offloaded gradient checkpointing do.

On a GPU the copy goes to pinned memory on a side stream, so it overlaps the next layer's compute. On a CPU run host
and device are one memory: the copy is a clone marked host-resident (measure/residency.py), and unpacking clones it
back, so the bytes are counted where a GPU would hold them. Weights are never copied (they stay live anyway), nor
tensors under MIN_BYTES; a tensor saved by several ops (a layer's input, by its q, k and v projections) is copied
once. The last layer's activations stay on the device unless `offload_last_layer: true`: backward needs them first,
so moving them out and straight back only costs time.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks

from revbench.activations.base import Activations
from revbench.activations.checkpoint import Checkpoint, decoder_layers
from revbench.measure.residency import host_residency
from revbench.spec import TrainSpec

MIN_BYTES = 1024  # smaller saved tensors (norms' statistics, scalars) are not worth a copy: torchtune's threshold


def _is_weight(t: torch.Tensor) -> bool:
    """A parameter, or a view of one (linear saves `weight.t()`): live all step anyway, and trained in place. (Not any
    leaf that requires grad: with frozen embeddings the first layer's input is one, made so by
    `enable_input_require_grads`.)"""
    return isinstance(t._base if t._is_view() else t, nn.Parameter)


class _HostCopy:
    """A saved tensor's host copy; brings it back once per backward use, sharing a copy still alive."""

    def __init__(self, t: torch.Tensor, stream: torch.cuda.Stream | None) -> None:
        self.device, self.stream = t.device, stream
        self.storage = weakref.ref(t.untyped_storage())  # tells a copy of this tensor from one of a later tensor
        self.back: weakref.ref | None = None
        with host_residency():
            if stream is None:
                self.host = t.clone()
                return
            self.host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
        stream.wait_stream(torch.cuda.current_stream(t.device))
        with torch.cuda.stream(stream):
            self.host.copy_(t, non_blocking=True)
        t.record_stream(stream)  # t's block is not reused before the copy has read it

    def restore(self) -> torch.Tensor:
        back = self.back() if self.back is not None else None
        if back is None:
            if self.stream is None:
                back = self.host.clone()
            else:
                torch.cuda.current_stream(self.device).wait_stream(self.stream)
                back = self.host.to(self.device, non_blocking=True)
            self.back = weakref.ref(back)
        return back


class HostOffload:
    """The pack and unpack hooks of one run: copies made once per saved tensor, freed with the graph that saved them.
    It counts its own copies' bytes too (`peak_bytes`): the measurement's figure, read the technique's way, on any
    device."""

    def __init__(self) -> None:
        self.copies: weakref.WeakValueDictionary[tuple, _HostCopy] = weakref.WeakValueDictionary()
        self.stream: torch.cuda.Stream | None = None
        self.live_bytes = self.peak_bytes = 0

    def pack(self, t: torch.Tensor) -> Any:
        if _is_weight(t) or t.numel() * t.element_size() < MIN_BYTES:
            return t
        key = (t.untyped_storage()._cdata, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        copy = self.copies.get(key)
        if copy is None or copy.storage() is not t.untyped_storage():
            copy = self.copies[key] = _HostCopy(t, self._stream_for(t))
            nbytes = copy.host.untyped_storage().nbytes()
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            weakref.finalize(copy, self._freed, nbytes)
        return copy

    def _freed(self, nbytes: int) -> None:
        self.live_bytes -= nbytes

    @staticmethod
    def unpack(packed: Any) -> torch.Tensor:
        return packed.restore() if isinstance(packed, _HostCopy) else packed

    def _stream_for(self, t: torch.Tensor) -> torch.cuda.Stream | None:
        if t.device.type != "cuda":
            return None
        if self.stream is None:
            self.stream = torch.cuda.Stream(t.device)
        return self.stream

    def hooks(self) -> saved_tensors_hooks:
        return saved_tensors_hooks(self.pack, self.unpack)


def _checkpointed(layer: nn.Module) -> bool:
    return bool(getattr(layer, "gradient_checkpointing", False)) and layer.training and torch.is_grad_enabled()


def _offloaded_checkpoint(offload: HostOffload, checkpoint: Any, *args: Any, **kwargs: Any) -> Any:
    with offload.hooks():
        return checkpoint(*args, **kwargs)


def offload_layers(model: nn.Module, offload: HostOffload, last_layer: bool) -> int:
    """Install `offload` on every decoder layer (but the last, unless `last_layer`); how many it is on. A layer that
    checkpoints offloads around its checkpoint (the boundary); one that does not, around its forward."""
    layers = decoder_layers(model)
    chosen = layers if last_layer else layers[:-1]
    for layer in chosen:
        if hasattr(layer, "_gradient_checkpointing_func"):
            layer._gradient_checkpointing_func = functools.partial(_offloaded_checkpoint, offload,
                                                                   layer._gradient_checkpointing_func)
        entered: list[saved_tensors_hooks] = []

        def enter(module: nn.Module, args: Any, entered: list = entered) -> None:
            if not _checkpointed(module):
                entered.append(offload.hooks())
                entered[-1].__enter__()

        def leave(module: nn.Module, args: Any, output: Any, entered: list = entered) -> None:
            if entered:
                entered.pop().__exit__(None, None, None)

        layer.register_forward_pre_hook(enter)
        layer.register_forward_hook(leave, always_call=True)
    return len(chosen)


class Offloaded:
    """Mixed into an activation technique: its layers' saved tensors (or boundaries) offloaded after it builds."""

    def __init__(self, spec: TrainSpec) -> None:
        super().__init__(spec)  # type: ignore[call-arg]  # the technique's own
        self.last_layer = spec.flag_option("offload_last_layer", default=False)
        self.offload, self.offloaded = HostOffload(), 0

    def build(self, model: nn.Module) -> nn.Module:
        model = super().build(model)  # type: ignore[misc]
        self.offloaded = offload_layers(model, self.offload, self.last_layer)
        return model

    def stats(self, model: nn.Module) -> dict[str, Any]:
        return {**super().stats(model), "offloaded_layers": self.offloaded,  # type: ignore[misc]
                "layers": len(decoder_layers(model)), "host_copies_peak_bytes": self.offload.peak_bytes}


class OffloadActivations(Offloaded, Activations):
    """`store` with every decoder layer's saved tensors in host memory between forward and backward."""

    name = "offload-activations"
    option_names = ("offload_last_layer",)
    saves_on_device = False


class CheckpointOffload(Offloaded, Checkpoint):
    """`checkpoint` with each checkpointed layer's input (its boundary) in host memory until its recompute."""

    name = "checkpoint-offload"
    option_names = (*Checkpoint.option_names, "offload_last_layer")
