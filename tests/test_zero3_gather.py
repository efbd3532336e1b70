"""What ZeRO-3 holds gathered in backward (estimate/zero3_gather.py): DeepSpeed's reuse-distance rule over the fetch
trace, and the fused expert weights that forward's saved views keep. Measured on real ranks in
test_scale_out_ranks.py; here, the rule's answers for the tiny model and at paper scale."""

from __future__ import annotations

import pytest

from revbench.data import Workload
from revbench.estimate import leaf_end
from revbench.estimate.leaf_end import leaf_end_drop
from revbench.estimate.scale_out import TRANSIENT_STATES, transient_spec
from revbench.estimate.zero3_gather import (
    FetchUnit,
    Gathering,
    fetch_trace,
    fetch_units,
    gathered_in_backward,
    leaf_gradients,
)
from revbench.models import ModelSpec
from revbench.models.zoo import build_model
from revbench.spec import TrainSpec

TINY = Gathering(threshold=10 * 128)  # the tiny model's "auto" persistence threshold, 10 x hidden; distance 1e9
AT_ONCE = Gathering(threshold=10 * 128, distance=0)  # every module released after it runs
EXPERTS = 8 * 512 * 128 + 8 * 128 * 256  # one tiny layer's fused gate_up_proj and down_proj
MOE_BLOCK = 984_192 - 1024 - 128  # one tiny MoE block (a DeepSpeed leaf module) past its persistent router gates


@pytest.fixture(scope="module")
def tiny() -> tuple[FetchUnit, ...]:
    return fetch_units(build_model(ModelSpec(layers=2), device="meta"))


def test_a_leaf_module_is_one_unit_and_the_fused_experts_are_its_viewed_weights(tiny: tuple) -> None:
    blocks = [u for u in tiny if u.leaf]
    assert [u.layer for u in blocks] == [0, 1]
    assert all(u.views == EXPERTS and sum(u.numels) == 984_192 for u in blocks)
    assert tiny[0].layer is None and tiny[-1].layer is None  # the embedding first, the LM head last
    assert [u.layer for u in tiny[1:-2]] == sorted(u.layer for u in tiny[1:-2])


def test_the_reversible_stacks_run_their_layers_between_the_embeddings_and_the_head() -> None:
    """RevFFN's converted model registers its LM head before the layers; forward still runs it last."""
    from revbench.activations.revffn import RevFFN
    from revbench.spec import TrainSpec

    model = RevFFN(TrainSpec(model=ModelSpec(layers=2))).prepare(build_model(ModelSpec(layers=2), device="meta"))
    units = fetch_units(model)
    assert [u.layer for u in units] == [None, *[0] * 11, *[1] * 11, None, None]
    assert sum(units[-2].numels) == 32_768  # the LM head, then the final norm


def test_a_recomputing_technique_runs_each_layer_forward_again_before_its_backward() -> None:
    units = (FetchUnit(None, (4,), False, 0), FetchUnit(0, (4,), False, 0), FetchUnit(0, (4,), False, 0),
             FetchUnit(1, (4,), False, 0), FetchUnit(None, (4,), False, 0))
    assert fetch_trace(units, recomputes=False) == ([0, 1, 2, 3, 4, 4, 3, 2, 1, 0], 5)
    assert fetch_trace(units, recomputes=True) == ([0, 1, 2, 3, 4, 4, 3, 3, 1, 2, 2, 1, 0], 5)


def test_within_the_reuse_distance_everything_gathered_in_forward_stays_until_backward(tiny: tuple) -> None:
    """The tiny model's whole trace is under DeepSpeed's default distance (1e9 parameters): nothing is released
    between a module's forward and its backward, whatever the technique (measured: both layers gathered at the
    backward peak of 2 and 4 CPU ranks)."""
    every = sum(n for u in tiny for n in u.numels if n > TINY.threshold)
    assert every == 2_129_920
    for recomputes, views in ((False, True), (True, False)):
        assert gathered_in_backward(tiny, TINY, recomputes, views) == every


def test_past_the_reuse_distance_forward_s_saved_views_still_hold_the_expert_weights(tiny: tuple) -> None:
    """At distance 0 DeepSpeed releases every module after it runs, but the views of the fused expert weights that
    autograd saved keep their storage: both layers' experts, and the last block gathered again for its backward.
    A recomputing technique saves no views in forward: one block at a time."""
    assert gathered_in_backward(tiny, AT_ONCE, recomputes=False, holds_views=True) == \
        2 * EXPERTS + MOE_BLOCK
    assert gathered_in_backward(tiny, AT_ONCE, recomputes=True, holds_views=False) == MOE_BLOCK


def test_at_paper_scale_store_keeps_every_layer_s_experts_and_checkpointing_one_layer() -> None:
    """Qwen1.5-MoE-A2.7B: a layer is 0.57e9 parameters, so DeepSpeed keeps only the last layer and the LM head
    from forward to backward; with every activation stored, the other 23 layers' expert weights stay too."""
    units = fetch_units(build_model(ModelSpec("qwen1.5-moe-a2.7b", dtype="bf16"), device="meta"))
    settings = Gathering(threshold=10 * 2048)
    experts = 60 * 3 * 2048 * 1408
    last_layer_and_head = gathered_in_backward(units, settings, recomputes=True, holds_views=False)
    assert last_layer_and_head == 864_935_936
    assert gathered_in_backward(units, settings, recomputes=False, holds_views=True) == \
        23 * experts + last_layer_and_head
    assert leaf_gradients(units) == (553_773_056, 60 * 2 * 1408 * 2048)  # a block's gradients, its largest


def test_a_block_s_end_holds_one_layer_s_bytes_less_than_the_peak_at_any_depth(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ZeRO-3 reduces a MoE block's gradients, the block's backward has freed its saved tensors and the
    gradient in hand: the step holds 2,428,672 bytes less than at its peak (the 2,097,152 of gate_up_proj's
    gradient among them), traced at 2 layers and the same at 4, with every activation stored or checkpointed."""
    spec = transient_spec(TrainSpec(model=ModelSpec(layers=4), workload=Workload(batch=1, seq=32, data="text")))
    for activations in ("store", "checkpoint"):
        name = f"{activations}+{TRANSIENT_STATES}+full"
        at_two = leaf_end_drop(name, spec, "cpu")
        with monkeypatch.context() as patch:
            patch.setattr(leaf_end, "TRACED_LAYERS", 4)
            assert leaf_end_drop(name, spec, "cpu") == at_two == 2_428_672
