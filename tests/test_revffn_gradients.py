"""RevFFN's reversible backward against the same blocks through plain autograd (mode="vanilla").

Adapters are moved off their structured init first, so nothing here relies on identity-like adapters.
"""

import pytest
import torch

from revbench.models import TINY_PRESETS, ModelSpec, build_model
from revbench.revffn import ReconstructionError, RevFFNForCausalLM, convert


def tokens(batch: int = 2, seq: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(seed))


def perturb(model: RevFFNForCausalLM, seed: int = 1, strength: float = 0.3) -> None:
    """Every adapter and new norm: W += strength * max|W| / sqrt(fan_in) * N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.new_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype)
            p.add_(noise * strength * p.abs().max() / p.shape[-1] ** 0.5)


def gradients(model: RevFFNForCausalLM, ids: torch.Tensor, **options) -> tuple[torch.Tensor, dict]:
    if options:
        model.configure(**options)
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def autocast_gradients(model: RevFFNForCausalLM, ids: torch.Tensor, device_type: str, enabled: bool = True,
                       **options) -> dict:
    """Every parameter's gradient (as float32 copies) of one step under bf16 autocast, in the given mode."""
    model.configure(**options)
    model.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return {n: p.grad.float().clone() for n, p in model.named_parameters()}


def worst_rel(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(((a[n] - b[n]).norm() / b[n].norm().clamp_min(1e-300)).item() for n in b)


def reversible_matches_vanilla(model: RevFFNForCausalLM, ids: torch.Tensor) -> list[dict]:
    """Gradients of reversible mode equal vanilla mode's with no fallback; returns the reconstruction stats."""
    _, rev = gradients(model, ids)
    stats = model.reconstruction_stats()
    _, van = gradients(model, ids, mode="vanilla")
    assert not any(s["fallback"] for s in stats) and max(s["input_error"] for s in stats) <= 1e-6
    assert worst_rel(rev, van) <= 1e-5
    return stats


def converted(preset: str, dtype: str = "float32", layers: int = 2, hidden: int = 64, config: dict | None = None,
              **options) -> RevFFNForCausalLM:
    spec = ModelSpec(preset, layers=layers, hidden=hidden, dtype=dtype,
                     experts_impl="eager" if dtype == "float64" else "grouped_mm", config=config or {})
    model = convert(build_model(spec), **options).train()
    perturb(model)
    return model


@pytest.mark.parametrize("preset", TINY_PRESETS)
@pytest.mark.parametrize(("dtype", "input_tol", "grad_tol"), [("float32", 1e-6, 1e-5), ("float64", 1e-12, 1e-10)])
def test_reconstruction_and_gradients_match_vanilla(preset: str, dtype: str, input_tol: float,
                                                    grad_tol: float) -> None:
    model = converted(preset, dtype, verify=True)
    ids = tokens()
    rev_loss, rev = gradients(model, ids)
    stats = model.reconstruction_stats()
    van_loss, van = gradients(model, ids, mode="vanilla")
    torch.testing.assert_close(rev_loss, van_loss, rtol=1e-6, atol=0)
    assert [s["fallback"] for s in stats] == [False, False]  # reconstructed by the fixed point, not recomputed
    assert all(s["iterations"] >= 2 for s in stats)
    assert max(s["input_error"] for s in stats) <= input_tol
    assert max(s["residual"] for s in stats) <= input_tol
    assert set(van) == {n for n, _ in model.named_parameters()}  # every parameter, embeddings to LM head
    assert worst_rel(rev, van) <= grad_tol


def _near_tie_router(model: RevFFNForCausalLM, ids: torch.Tensor) -> None:
    """Layer 0's router: experts 1 and 2 tie exactly (in exact arithmetic) on every token's forward input
    but not on inputs that differ from it, so a reconstruction error decides between them.

    Layer 0's MoE input U lies in the range of its up-adapter and does not depend on its router. The
    router is solved for fixed logits (expert 0: 2, experts 1 and 2: 1, others: -1) on U, and expert 2's
    row gets an extra direction in that range orthogonal to every row of U.
    """
    block = model.model.layers[0]
    seen = {}
    handle = block.mlp.gate.register_forward_pre_hook(lambda m, args: seen.setdefault("u", args[0].detach()))
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    u = seen["u"].double()
    up = block.adapter_for("moe").up.weight.double()
    _, _, vh = torch.linalg.svd(u @ up)  # fewer tokens than stream width: a null space exists
    direction = up @ vh[-1]
    logits = torch.full((u.shape[0], block.mlp.gate.weight.shape[0]), -1.0, dtype=torch.float64)
    logits[:, 0], logits[:, 1:3] = 2.0, 1.0
    weight = torch.linalg.lstsq(u, logits).solution.T
    weight[2] = weight[1] + weight[1].norm() * direction / direction.norm()
    with torch.no_grad():
        block.mlp.gate.weight.copy_(weight)


def test_routing_flip_is_replayed() -> None:
    model = converted("tiny-mixtral")  # renormalised top-k: an unselected expert's logit cannot move the weights
    ids = tokens(batch=1, seq=16)  # fewer tokens than the stream is wide
    _near_tie_router(model, ids)
    _, van = gradients(model, ids, mode="vanilla")

    with pytest.warns(UserWarning, match="top-k differs"):
        _, unreplayed = gradients(model, ids, mode="reversible", replay_routing=False, fallback="warn")
    flips = model.reconstruction_stats()[0]["routing_flips"]
    assert flips > 0  # recompute without replay picks other experts for some tokens...
    assert worst_rel(unreplayed, van) > 1e-2  # ...and the gradients are wrong

    _, replayed = gradients(model, ids, replay_routing=True, fallback="recompute")
    stats = model.reconstruction_stats()
    assert stats[0]["routing_flips"] > 0 and not any(s["fallback"] for s in stats)  # flips replayed, no fallback
    assert worst_rel(replayed, van) <= 1e-5

    _, safe = gradients(model, ids, replay_routing=False)  # no replay, but the flip is caught and recomputed
    assert model.reconstruction_stats()[0]["fallback"]
    assert worst_rel(safe, van) <= 1e-5


def test_router_jitter_rng_is_replayed() -> None:
    model = converted("tiny-mixtral", config={"router_jitter_noise": 0.5})
    ids = tokens()

    def seeded(seed: int, **options) -> tuple[torch.Tensor, dict]:
        torch.manual_seed(seed)
        return gradients(model, ids, **options)

    loss, rev = seeded(7)
    van_loss, van = seeded(7, mode="vanilla")
    other_loss, _ = seeded(8)
    assert other_loss != van_loss  # the jitter noise is really drawn in training
    torch.testing.assert_close(loss, van_loss, rtol=1e-6, atol=0)
    assert not any(s["fallback"] for s in model.reconstruction_stats())
    assert worst_rel(rev, van) <= 1e-5


def test_closed_form_coupling_needs_no_iteration() -> None:
    stats = reversible_matches_vanilla(converted("tiny-qwen3-moe", coupling="closed-form", verify=True), tokens())
    assert [s["iterations"] for s in stats] == [0, 0]


def test_plain_fixed_point_iteration_also_reconstructs() -> None:
    reversible_matches_vanilla(converted("tiny-olmoe", solver="picard", verify=True), tokens())


def test_divergent_fixed_point_falls_back_and_is_counted() -> None:
    model = converted("tiny-qwen3-moe", init_scale=4.0)  # ||F|| / ||X1|| far beyond the contraction region
    ids = tokens()
    _, rev = gradients(model, ids)
    summary = model.reconstruction_summary()
    _, van = gradients(model, ids, mode="vanilla")
    assert summary["fallbacks_last_backward"] >= 1 and summary["fallbacks_total"] >= 1
    assert worst_rel(rev, van) <= 1e-5  # the fallback's gradients are exact
    with pytest.raises(ReconstructionError, match="missed its tolerance"):
        gradients(model, ids, mode="reversible", fallback="raise")


def test_bf16_autocast_runs_close_to_vanilla() -> None:
    model = converted("tiny-qwen2-moe")
    ids = tokens()

    rev = autocast_gradients(model, ids, "cpu", mode="reversible")
    stats = model.reconstruction_stats()
    van = autocast_gradients(model, ids, "cpu", mode="vanilla")
    assert not any(s["fallback"] for s in stats)
    assert max(s["residual"] for s in stats) <= 8 * torch.finfo(torch.bfloat16).eps  # the bf16 tolerance
    assert worst_rel(rev, van) <= 5e-2  # bf16 compute: reconstruction is exact to bf16 precision only


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_cuda_bf16_params_and_bf16_autocast(dtype: str) -> None:
    model = convert(build_model(ModelSpec("tiny-qwen3-moe", layers=2, dtype=dtype), device="cuda")).train()
    perturb(model)
    ids = tokens().cuda()
    autocast = dtype == "float32"  # bf16 parameters run as they are; fp32 ones under bf16 autocast
    rev = autocast_gradients(model, ids, "cuda", enabled=autocast, mode="reversible")
    stats = model.reconstruction_stats()
    van = autocast_gradients(model, ids, "cuda", enabled=autocast, mode="vanilla")
    assert not any(s["fallback"] for s in stats)
    assert worst_rel(rev, van) <= 5e-2
