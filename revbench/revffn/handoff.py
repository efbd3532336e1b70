"""The reversible stacks' autograd construction: one graph node per layer, so each layer's parameter gradients
leave backward as soon as they exist.

    embeds -> Start -> Layer_0 -> ... -> Layer_{L-1} -> Output -> (stack output, router logits)

Start runs the whole forward without grad; the layer nodes only pass an empty token along, and Output hands out
what Start computed. Backward walks the chain down: Output gives the walk the output's gradients, each Layer_n
reconstructs layer n and returns its parameters' gradients (Layer_0 also closes the walk, since Start is not in the
graph when the stack input takes no gradient: frozen embeddings, LoRA), and autograd's own AccumulateGrad nodes
(which it runs as soon as they are ready) put them in `.grad` and fire every hook on them (in-backward optimizer steps,
ZeRO's reduce and offload, DDP's buckets) before layer n-1 is touched. The layer's parameters are ordinary inputs
of its node, so `torch.autograd.grad` and `backward(inputs=...)` see them as any other gradient.

The walk's state (the reconstructed streams, the running input gradients) travels beside the graph, in the walk
object, as RevViT and revlib carry it; only one layer's gradients are ever live.

A layer whose parameters ZeRO-3 partitions cannot take them as node inputs (their shape at the node is [0]):
its walk leaves them out and hands its gradients to autograd inside its own backward, while ZeRO-3 has them
gathered (`layer_grads`), as DeepSpeed's own re-entrant checkpointing does. ZeRO-3 gathers a weight inside its
module's call (forward and backward); what a layer reads outside those calls (RevFFN's norm weights) is gathered
around the read (`gathered`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn


class Walk(ABC):
    """One forward of a reversible stack and its backward, layer by layer."""

    keeps_output: bool  # does backward start from the stack's output values (else from state the walk keeps)?

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        self.layers = layers
        # ZeRO-3 partitions the layers' weights (their shape outside their modules' calls is [0]): they cannot be
        # node inputs, so their gradients go to autograd from inside the walk (layer_grads) instead.
        self.nested = partitioned([p for layer in layers for p in layer.parameters()])
        self.result: tuple[torch.Tensor, list[torch.Tensor]] | None = None  # the forward's outputs, Start to Output
        self.input_needs_grad = False  # set by Start
        self.input_grad: torch.Tensor | None = None  # from Layer_0 to Start
        self.grad_logits: list[torch.Tensor | None] = []  # per layer with a router, set by Output

    def logits_grad(self, slot: int | None) -> torch.Tensor | None:
        """The gradient of one layer's router logits, handed out once: freed as the backward goes down."""
        if slot is None:
            return None
        grad, self.grad_logits[slot] = self.grad_logits[slot], None
        return grad

    @abstractmethod
    def forward(self, embeds: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The stack's output and its router logits, without grad, keeping what backward needs."""

    def node_params(self, n: int) -> list[nn.Parameter]:
        """Layer n's parameters that are inputs of its graph node."""
        return [] if self.nested else list(self.layers[n].parameters())

    @abstractmethod
    def begin_backward(self, out: torch.Tensor | None, grad_out: torch.Tensor | None) -> None:
        """Start the walk from the output (kept only where keeps_output) and its gradient."""

    @abstractmethod
    def layer_backward(self, n: int) -> dict[int, torch.Tensor]:
        """Reconstruct layer n, step the input gradients down past it; id(parameter) -> gradient."""

    @abstractmethod
    def end_backward(self) -> torch.Tensor | None:
        """After layer 0: record the backward's statistics, free the walk's state; the stack input's gradient."""


def partitioned(params: list[nn.Parameter]) -> bool:
    """Are these parameters partitioned by DeepSpeed ZeRO-3 (gathered only inside their modules' calls)?"""
    return any(hasattr(p, "ds_id") for p in params)


def gathered(params: list[nn.Parameter]) -> AbstractContextManager[None]:
    """Inside: these parameters whole where ZeRO-3 has partitioned them away, for code that reads them outside
    their modules' calls. Only those partitioned away now are gathered (and released after): ones that ZeRO-3 holds
    whole (persistent, or registered with a module that is running) are its to release."""
    away = [p for p in params if hasattr(p, "ds_id") and p.ds_status.name == "NOT_AVAILABLE"]
    if not away:
        return nullcontext()
    import deepspeed  # only here, where DeepSpeed has partitioned the parameters

    return deepspeed.zero.GatheredParameters(away)


def layer_grads(outputs: list[torch.Tensor], out_grads: list[torch.Tensor], leaves: list[torch.Tensor],
                params: list[nn.Parameter]) -> tuple[list[torch.Tensor | None], dict[int, torch.Tensor]]:
    """Backpropagate a recomputed layer (or one branch of it): the leaves' gradients and id(parameter) -> gradient.
    Under ZeRO-3 the parameter gradients go into `.grad` at once, while the layer's modules have their weights
    gathered, and none are returned."""
    if partitioned(params):
        if not torch.autograd._is_checkpoint_valid():
            raise RuntimeError("a reversible stack over ZeRO-3-partitioned parameters hands their gradients to "
                               "autograd inside its backward, which torch.autograd.grad and backward(inputs=...) do "
                               "not allow; call loss.backward() (or the DeepSpeed engine's backward)")
        torch.autograd.backward(outputs, out_grads, inputs=[*leaves, *params])
        return [leaf.grad for leaf in leaves], {}
    result = torch.autograd.grad(outputs, [*leaves, *params], out_grads, allow_unused=True)
    grads = {id(p): grad for p, grad in zip(params, result[len(leaves):], strict=True) if grad is not None}
    return list(result[:len(leaves)]), grads


def _token(like: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, device=like.device)


class _Start(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, walk: Walk, embeds: torch.Tensor) -> torch.Tensor:
        ctx.walk = walk
        ctx.set_materialize_grads(False)
        walk.result = walk.forward(embeds)  # handed out (and dropped) by _Output
        walk.input_needs_grad = ctx.needs_input_grad[1]
        return _token(embeds)

    @staticmethod
    def backward(ctx: Any, _: torch.Tensor | None) -> tuple[Any, ...]:
        grad, ctx.walk.input_grad = ctx.walk.input_grad, None
        return None, grad


class _Layer(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, walk: Walk, n: int, token: torch.Tensor, *params: nn.Parameter) -> torch.Tensor:
        ctx.walk, ctx.n, ctx.params = walk, n, params
        ctx.set_materialize_grads(False)
        return _token(token)

    @staticmethod
    def backward(ctx: Any, _: torch.Tensor | None) -> tuple[Any, ...]:
        walk = ctx.walk
        grads = walk.layer_backward(ctx.n)
        if ctx.n == 0:
            walk.input_grad = walk.end_backward()
        return (None, None, None, *(grads.get(id(p)) for p in ctx.params))


class _Output(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, walk: Walk, token: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out, logits = walk.result
        walk.result = None
        ctx.walk = walk
        ctx.set_materialize_grads(False)
        # Saved, not kept on the walk (an output kept by its own node is a cycle); and only where backward reads it,
        # so that the stack's output is freed once its consumers are done with it.
        ctx.save_for_backward(out if walk.keeps_output else None)
        return (out, *logits)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor | None, *grad_logits: torch.Tensor | None) -> tuple[Any, ...]:
        (out,) = ctx.saved_tensors
        ctx.walk.grad_logits = list(grad_logits)
        ctx.walk.begin_backward(out, grad_out)
        return None, None


def run_stack(walk: Walk, embeds: torch.Tensor, layers: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The stack's output and router logits, with the per-layer backward chain behind them."""
    token = _Start.apply(walk, embeds)
    for n in range(layers):
        token = _Layer.apply(walk, n, token, *walk.node_params(n))
    out, *logits = _Output.apply(walk, token)
    return out, list(logits)
