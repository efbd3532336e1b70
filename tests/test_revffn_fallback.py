"""RevFFN's fallback in O(L): one recompute from the stack input serves every layer below it; and the input
sketch, which sees reconstruction error the output residual cannot."""

import pytest
import torch
from test_revffn_gradients import converted, gradients, tokens, worst_rel

import revbench.revffn.inverse as inverse

LAYERS = 6


def test_fallback_everywhere_recomputes_at_most_one_forward_per_layer() -> None:
    model = converted("tiny-qwen2-moe", layers=LAYERS)
    ids = tokens()
    _, van = gradients(model, ids, mode="vanilla")
    _, rev = gradients(model, ids, mode="reversible", tol=1e-30, max_iters=1)  # every inversion misses
    summary = model.reconstruction_summary()
    # The top layer falls back and recomputes layers 0..L-2 once; every layer below takes its input from that.
    assert summary["fallbacks_last_backward"] == 1 and summary["layers_from_cache_last_backward"] == LAYERS - 1
    assert summary["recomputed_layer_forwards_last_backward"] == LAYERS - 1 <= LAYERS  # O(L^2) would be 15
    hidden_bytes = ids.numel() * model.config.hidden_size * 4
    assert summary["fallback_bytes_kept_last_backward"] == LAYERS * hidden_bytes  # inputs of layers 0..L-1
    assert worst_rel(rev, van) <= 1e-5


def _perturbed_fixed_point(layer: int, scale: float):
    """The fixed point of `layer` off by `scale` (relative): an error its residual check cannot fully see when
    the residual tolerance is loose."""
    original = inverse.fixed_point

    def fixed_point(run, i, *args):
        x1, iterations, delta = original(run, i, *args)
        return (x1 * (1 + scale) if i == layer else x1), iterations, delta

    return fixed_point


@pytest.mark.parametrize("sketch_dim", [0, 4])
def test_the_input_sketch_catches_what_a_loose_residual_check_lets_through(monkeypatch, sketch_dim: int) -> None:
    model = converted("tiny-olmoe", layers=3)
    ids = tokens()
    _, van = gradients(model, ids, mode="vanilla")
    monkeypatch.setattr(inverse, "fixed_point", _perturbed_fixed_point(2, 1e-3))
    _, rev = gradients(model, ids, mode="reversible", tol=1e-1, sketch_dim=sketch_dim, sketch_tol=1e-5)
    summary = model.reconstruction_summary()
    if sketch_dim == 0:  # the residual alone passes the wrong input on to the layers below
        assert summary["fallbacks_last_backward"] == 0 and worst_rel(rev, van) > 1e-4
    else:
        assert summary["worst_sketch_error"] > 1e-5 and summary["fallbacks_per_layer"][2] >= 1
        assert worst_rel(rev, van) <= 1e-5
    with torch.no_grad():
        assert model(input_ids=ids).logits.isfinite().all()
