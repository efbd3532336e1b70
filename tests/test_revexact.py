"""revexact: bit-exact reconstruction over the unchanged layers, gradients equal to the vanilla quantised
forward, the checksum fallback, the grid's range check and the side-bit packing."""

import pytest
import torch

from revbench.models import TINY_PRESETS, ModelSpec, build_model
from revbench.revexact import GridOverflowError, RevExactForCausalLM, RevExactOptions, convert
from revbench.revexact.sidebits import pack, unpack
from revbench.revffn import ReconstructionError

LAYERS = 8


def tokens(batch: int = 1, seq: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(seed))


def converted(preset: str = "tiny-qwen2-moe", layers: int = LAYERS, **options) -> RevExactForCausalLM:
    return convert(build_model(ModelSpec(preset, layers=layers), seed=0), **options).train()


def gradients(model: RevExactForCausalLM, ids: torch.Tensor, autocast: bool = False, **options) -> dict:
    model.configure(**options)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_every_layer_input_is_rebuilt_bit_exactly(preset: str, autocast: bool) -> None:
    model = converted(preset, verify=True)
    gradients(model, tokens(), autocast=autocast)
    stats = model.reconstruction_stats()
    assert len(stats) == LAYERS
    assert all(s["exact"] for s in stats), stats  # torch.equal against the forward's own streams
    assert all(s["checksum_ok"] for s in stats[1:]) and not any(s["fallback"] for s in stats)
    assert model.reconstruction_summary()["recomputed_layer_forwards_last_backward"] == 0


def test_gradients_equal_plain_autograd_through_the_same_quantised_forward() -> None:
    model = converted()
    ids = tokens(2, 32)
    rev, van = gradients(model, ids), gradients(model, ids, mode="vanilla")
    assert rev.keys() == van.keys() and len(rev) == len(list(model.parameters()))
    total = torch.cat([(rev[n] - van[n]).flatten() for n in van]).norm() / torch.cat(
        [g.flatten() for g in van.values()]).norm()
    assert total <= 1e-6
    # Key biases are left out per parameter: softmax is invariant to a bias shared by every key, so their exact
    # gradient is zero and what both modes compute is float32 rounding noise.
    worst = max(((rev[n] - van[n]).norm() / van[n].norm()).item() for n in van if "k_proj.bias" not in n)
    assert worst <= 1e-6


def test_training_forward_equals_inference_forward() -> None:
    model = converted(layers=3)
    ids = tokens()
    with torch.no_grad():
        inference = model(input_ids=ids, labels=ids).loss
    assert torch.equal(model(input_ids=ids, labels=ids).loss.detach(), inference)


def corrupt_side_bit(model: RevExactForCausalLM, layer: int) -> None:
    """Flip one stored side bit of `layer` after the forward, before the backward."""
    original = model._run

    def run(*args):
        stack = original(*args)
        on_forward = stack.grid.step

        def step(x_prev, q, where):
            x_next, side = on_forward(x_prev, q, where)
            if where == f"layer {layer}":
                side = side.clone()
                side.view(-1)[7] ^= 1
            return x_next, side

        stack.grid = type(stack.grid)(stack.grid.grid_bits, stack.grid.side_bits)
        stack.grid.step = step
        return stack

    model._run = run


def test_a_corrupted_side_bit_triggers_the_checksum_fallback_once() -> None:
    model = converted()
    ids = tokens(2, 32)
    reference = gradients(model, ids, mode="vanilla")
    corrupt_side_bit(model, 5)
    rev = gradients(model, ids, mode="reversible")
    summary = model.reconstruction_summary()
    assert summary["checksum_mismatches_last_backward"] == 1 and summary["fallbacks_per_layer"][5] == 1
    assert summary["fallbacks_total"] == 1
    # O(L): the inputs of layers 0..4 are recomputed once, and the layers below 5 take them from that cache.
    assert summary["recomputed_layer_forwards_last_backward"] == 4 <= LAYERS
    assert summary["fallback_bytes_kept_last_backward"] == 5 * ids.numel() * model.config.hidden_size * 4
    worst = max(((rev[n] - reference[n]).norm() / reference[n].norm()).item() for n in reference
                if "k_proj.bias" not in n)
    assert worst <= 1e-6


def test_fallback_raise_names_the_layer() -> None:
    model = converted(layers=3, fallback="raise")
    corrupt_side_bit(model, 2)
    with pytest.raises(ReconstructionError, match="layer 2"):
        gradients(model, tokens())


def test_a_value_off_the_grid_is_a_clear_error() -> None:
    model = converted(layers=2, grid_bits=24)  # |x| < 64
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(1000)
    with pytest.raises(GridOverflowError, match="grid_bits=24"):
        model(input_ids=tokens(), labels=tokens())


def test_side_bits_are_packed_to_k_bits_per_element() -> None:
    model = converted(layers=4, side_bits=5)
    ids = tokens(2, 32)
    model(input_ids=ids, labels=ids).loss.backward()
    # Layers 1..3 keep side bits; layer 0 is a plain step.
    assert model.reconstruction_summary()["side_bit_bytes"] == 3 * 5 * ids.numel() * model.config.hidden_size // 8
    side = torch.randint(0, 2**7, (3, 5, 7), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    packed = pack(side, 7)
    assert packed.nbytes == 7 * 14 and torch.equal(unpack(packed), side)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="side_bits"):
        RevExactOptions(side_bits=0)
    with pytest.raises(ValueError, match="unknown revexact option"):
        RevExactOptions.from_kwargs(gamma=0.1)
    model = converted(layers=1)
    with pytest.raises(ValueError, match="fixed at conversion"):
        model.configure(side_bits=3)


@pytest.mark.parametrize("family", ["qwen2_moe", "mixtral"])
def test_conversion_keeps_an_upcycled_model_s_loss(family: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from revbench.data import TokenStream, Workload
    from revbench.pretrained import UpcycleSpec, upcycle
    from revbench.quality.heldout import lm_loss

    config = LlamaConfig(vocab_size=256, hidden_size=96, intermediate_size=192, num_hidden_layers=LAYERS,
                         num_attention_heads=6, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    moe = upcycle(LlamaForCausalLM(config).eval(), UpcycleSpec(family=family, experts=4, top_k=2))
    text = TokenStream(Workload(batch=2, seq=64), 256, split="heldout").batch(0)
    with torch.no_grad():
        before = float(lm_loss(moe, text))
        after = float(lm_loss(convert(moe), text))
    assert abs(after - before) <= 0.005, (before, after)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_cuda_inputs_are_rebuilt_bit_exactly_or_the_checksum_says_so(dtype: str) -> None:
    """On CUDA some MoE dispatch kernels are not bitwise reproducible: every layer must either be rebuilt exactly
    or be caught by its checksum (and then the gradients still equal vanilla's)."""
    spec = ModelSpec("tiny-qwen3-moe", layers=LAYERS, dtype=dtype)
    model = convert(build_model(spec, seed=0, device="cuda"), verify=True).train()
    ids = tokens(2, 64).cuda()
    rev = gradients(model, ids, autocast=False)
    stats = model.reconstruction_stats()
    assert all(s["exact"] or s["fallback"] for s in stats[1:]), stats
    van = gradients(model, ids, mode="vanilla")
    worst = max(((rev[n] - van[n]).float().norm() / van[n].float().norm()).item() for n in van
                if "k_proj.bias" not in n)
    assert worst <= (1e-6 if dtype == "float32" else 1e-2)


def test_forward_keeps_a_fraction_of_checkpointing_s_bytes_per_layer() -> None:
    from revbench.benchmarks.depth import forward_kept_bytes
    from revbench.data import Workload
    from revbench.methods import TrainSpec

    def kept(method: str, layers: int) -> int:
        spec = TrainSpec(model=ModelSpec("tiny-qwen2-moe", layers=layers), workload=Workload(batch=2, seq=64))
        return forward_kept_bytes(method, spec)

    ours, theirs = kept("revexact", 3) - kept("revexact", 2), kept("checkpointing", 3) - kept("checkpointing", 2)
    side = 2 * 64 * 128 * 5 // 8  # k = 5 bits per element of one layer's hidden state
    assert side <= ours <= 0.5 * theirs and theirs >= 2 * 64 * 128 * 4  # checkpointing keeps a float32 input


def test_the_checksum_does_not_depend_on_its_blocks() -> None:
    """Blocks bound the int64 temporaries and the number of reductions; int64 sums wrap, so the value is one sum."""
    from revbench.revexact.checksum import BLOCKS, CHUNK, Checksum, _weights

    # BLOCKS blocks, each past CHUNK elements
    stream = torch.randint(-(2**30), 2**30, (CHUNK * BLOCKS // 4, 8), dtype=torch.int32)
    whole = (stream.to(torch.int64) * _weights(8, stream.device)).sum()
    assert torch.equal(Checksum()(stream), whole)
