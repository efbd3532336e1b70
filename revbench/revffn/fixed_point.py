"""Solve X1 + F(X1, X2) = Y1 for X1 with X2 (so K/V) fixed: plain or Anderson-accelerated fixed-point iteration.

The problem is separable per token (with causal attention the query at position t depends only on
X1[t]), so both the stopping rule and Anderson's mixing weights are per token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from revbench.revffn.stack import token_rel

# Under fake tensors (estimates) nothing can be read back, so the solver runs this many iterations;
# its peak memory does not depend on the count.
FAKE_ITERATIONS = 2
# Iterations without a new smallest change after which the iteration is declared stalled.
PATIENCE = 5
# Anderson's history: each entry holds two stream-sized tensors (an image and a residual).
ANDERSON_MEMORY = 3


class Anderson:
    """Type-II Anderson mixing per token: the next iterate is the combination of the last images g(x_k)
    whose residuals g(x_k) - x_k combine to the smallest norm (weights summing to one)."""

    def __init__(self, memory: int = ANDERSON_MEMORY) -> None:
        self.memory = memory
        self.images: list[torch.Tensor] = []
        self.residuals: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        self.images = [*self.images, image][-self.memory:]
        self.residuals = [*self.residuals, image - x][-self.memory:]
        m = len(self.images)
        if m == 1:
            return image
        gram = torch.empty(*x.shape[:-1], m, m, dtype=torch.float64, device=x.device)
        for a in range(m):
            for b in range(a, m):
                dot = torch.linalg.vecdot(self.residuals[a], self.residuals[b]).double()
                gram[..., a, b] = gram[..., b, a] = dot
        # A relative ridge keeps tokens that already converged (zero residuals) solvable.
        ridge = 1e-10 * gram.diagonal(dim1=-2, dim2=-1).mean(-1) + torch.finfo(torch.float64).tiny
        eye = torch.eye(m, dtype=torch.float64, device=x.device)
        ones = torch.ones(*gram.shape[:-1], 1, dtype=torch.float64, device=x.device)
        weights = torch.linalg.solve(gram + ridge[..., None, None] * eye, ones)
        weights = (weights / weights.sum(-2, keepdim=True)).to(image.dtype)
        out = weights[..., 0, :] * self.images[0]
        for k in range(1, m):
            out = out + weights[..., k, :] * self.images[k]
        return out


def solve(image_of: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, solver: str, tol: float,
          max_iters: int, fake: bool) -> tuple[torch.Tensor, int, float | None]:
    """Iterate x <- image_of(x) (= Y1 - F(x)) from `start`: (x, iterations, last per-token relative change).

    Stops when the change is <= tol, after max_iters, or when the change has not reached a new low for
    PATIENCE iterations (not contracting, or stuck on a rounding floor above tol)."""
    mix = Anderson() if solver == "anderson" else None
    x, delta, iterations = start, None, 0
    best, stalled = float("inf"), 0
    cap = min(max_iters, FAKE_ITERATIONS) if fake else max_iters
    while iterations < cap:
        image = image_of(x)
        new = mix(x, image) if mix is not None else image
        iterations += 1
        if not fake:
            delta = token_rel((new,), (x,)).item()
        x = new
        if delta is None:
            continue
        if delta <= tol:
            break
        best, stalled = (delta, 0) if delta < best else (best, stalled + 1)
        if stalled >= PATIENCE:
            break
    return x, iterations, delta
