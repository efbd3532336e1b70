"""The quality suite without the real GGUF: a small random dense Llama stands in for SmolLM2, byte-level
CPython docs for the SmolLM2-tokenised text. Everything else (upcycle record, conversion, every method's
training with held-out evaluation, resume, report) is the real code path."""

import re
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

from revbench.data import Workload, default_text_path, read_byte_tokens
from revbench.orchestrator.suite import SuiteError
from revbench.pretrained import TokenizedStream, UpcycleSpec
from revbench.quality.driver import QualityData, QualityDriver
from revbench.quality.heldout import heldout_loss
from revbench.quality.report import render
from revbench.quality.suite import QualityRun, QualitySuite, load_quality_suite
from revbench.records import read_records


def test_shipped_suite_parses_and_evaluates_after_the_warmup() -> None:
    suite = load_quality_suite()
    assert [r.method for r in suite.runs] == ["standard", "checkpointing", "lora", "revffn", "revffn", "revexact",
                                              "revffn"]
    revffn = suite.runs[3]
    assert revffn.warmup_steps == 15 and 15 in suite.eval_steps(revffn)
    long = suite.runs[6]  # the fair trial: a 30-step adapter warm-up, then standard's 30 steps
    assert long.warmup_steps == 30 and suite.steps_of(long) == 60 and suite.eval_steps(long)[-1] == 60
    assert [long.lr_factor(s) for s in (0, 4, 9, 50)] == [0.1, 0.5, 1.0, 1.0]
    assert suite.eval_steps(suite.runs[0]) == [0, 5, 10, 15, 20, 25, 30]
    assert suite.optimizer_for(suite.runs[2]).lr == 5e-4 and suite.optimizer_for(suite.runs[0]).lr == 5e-5
    assert load_quality_suite(None, ["steps=2", "upcycle.layers=2"]).upcycle.layers == 2


def test_bad_quality_suites_are_named(tmp_path) -> None:
    with pytest.raises(SuiteError, match=r"runs\[0\]\.method: unknown method 'sgd'"):
        load_quality_suite(None, ["runs=[{label: a, method: sgd}]"])
    with pytest.raises(SuiteError, match="upcycle: cannot upcycle a dense Llama into 'olmoe'"):
        load_quality_suite(None, ["upcycle.family=olmoe"])
    with pytest.raises(SuiteError, match=r"workload\.data: the quality suite fine-tunes on real text"):
        load_quality_suite(None, ["workload.data=synthetic"])
    with pytest.raises(SuiteError, match="labels must be unique"):
        load_quality_suite(None, ["runs=[{label: a, method: standard}, {label: a, method: lora}]"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_quality_suite(str(tmp_path / "missing.yaml"))


def test_tokenized_stream_holds_out_the_tail_and_spreads_the_eval_set() -> None:
    tokens = torch.arange(1000)
    w = Workload(batch=2, seq=10, heldout_fraction=0.2)
    train, heldout = TokenizedStream(w, tokens), TokenizedStream(w, tokens, split="heldout")
    assert int(heldout.tokens[0]) == 800 and len(train.tokens) == 800
    assert torch.equal(train.batch(3), train.batch(3)) and train.batch(0)[1, 0] == 10
    batches = heldout.spread(3)
    assert [b.shape for b in batches] == [(2, 10)] * 3
    firsts = [int(w) for b in batches for w in b[:, 0]]
    assert firsts[0] == 800 and firsts[-1] == 800 + 10 * (heldout.windows - 1) and firsts == sorted(set(firsts))
    with pytest.raises(ValueError, match="fewer than seq"):
        TokenizedStream(Workload(seq=500, heldout_fraction=0.5), tokens, split="heldout")


def test_heldout_loss_is_cross_entropy_without_the_router_term() -> None:
    config = MixtralConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                           router_aux_loss_coef=0.5, output_router_logits=True)
    torch.manual_seed(0)
    model = MixtralForCausalLM(config).train()
    ids = torch.randint(0, 256, (2, 16))
    loss = heldout_loss(model, [ids[:1], ids[1:]])
    assert model.training  # restored
    with torch.no_grad():
        model.eval()
        plain = float(model(input_ids=ids, labels=ids, output_router_logits=False).loss)
        with_aux = float(model(input_ids=ids, labels=ids).loss)
    assert loss == pytest.approx(plain, abs=1e-5) and with_aux > plain + 0.1


@pytest.fixture(scope="module")
def driver_setup(tmp_path_factory) -> tuple[QualitySuite, Path, QualityData, LlamaForCausalLM]:
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    dense = LlamaForCausalLM(config).eval()
    workload = Workload(batch=2, seq=32)
    tokens = read_byte_tokens(default_text_path())
    data = QualityData(TokenizedStream(workload, tokens), TokenizedStream(workload, tokens, "heldout").spread(2),
                       len(tokens))
    suite = QualitySuite(
        upcycle=UpcycleSpec(family="qwen2_moe", experts=4, top_k=2, layers=2), workload=workload,
        runs=[QualityRun("standard", "standard"), QualityRun("checkpointing", "checkpointing"),
              QualityRun("lora", "lora", {"rank": 4}, lr=1e-2),
              QualityRun("revffn", "revffn", {"stage": "two-stage", "warmup_steps": 1}),
              QualityRun("revexact", "revexact"),
              QualityRun("standard warm-up", "standard", steps=3, lr_warmup_steps=2)],
        conversions=[{"coupling": "closed-form"}], steps=2, eval_every=2, eval_batches=2)
    return suite, tmp_path_factory.mktemp("quality"), data, dense


def test_driver_records_upcycle_conversion_and_every_method(driver_setup) -> None:
    suite, root, data, dense = driver_setup
    out = root / "results"
    info = {"source": "random-llama", "source_bytes": 0, "upcycle": suite.upcycle.to_dict()}
    driver = QualityDriver(suite, out, root / "checkpoint", data, info, log=lambda _: None)
    driver.upcycle(lambda: dense)
    driver.conversion({"coupling": "closed-form"})
    for run in suite.runs:
        driver.train(run)
    records = {r.config["label"]: r for r in read_records(out)}
    check = records.pop("dense -> upcycled MoE").metrics
    assert check["abs_difference"] < 1e-3 and check["upcycled_parameters"] > check["dense_parameters"]
    assert (root / "checkpoint" / "upcycle.json").is_file()
    assert records.pop("convert coupling=closed-form").metrics["heldout"]["step"] == [0]
    assert all(r.status == "ok" for r in records.values()), {k: r.error for k, r in records.items()}
    curves = {k: r.metrics["heldout"] for k, r in records.items()}
    assert curves["standard"]["step"] == [0, 2] and curves["revffn"]["step"] == [0, 1, 2]
    # Before training, LoRA (B = 0) and checkpointing are the upcycled model, which is the dense model.
    start = curves["standard"]["loss"][0]
    assert start == pytest.approx(check["dense_heldout_loss"], abs=1e-3)
    assert curves["lora"]["loss"][0] == pytest.approx(start, abs=1e-6)
    assert curves["checkpointing"]["loss"] == pytest.approx(curves["standard"]["loss"], abs=1e-5)
    assert curves["standard"]["loss"][-1] < start  # it learns
    assert records["revffn"].metrics["warmup_heldout_loss"] == curves["revffn"]["loss"][1]
    assert records["revffn"].method_stats["stage"] == "two-stage"
    assert len(records["lora"].losses) == 2 and records["lora"].method_stats["trainable_parameters"] > 0
    # revexact starts where the upcycled model is (exact reversible stack, nothing added) and learns.
    assert curves["revexact"]["loss"][0] == pytest.approx(start, abs=5e-3) and curves["revexact"]["loss"][-1] < start
    assert records["revexact"].method_stats["fallbacks_total"] == 0
    # A run's own step count and learning-rate warm-up: half the learning rate at step 0, then the full one.
    warm = records["standard warm-up"]
    assert len(warm.losses) == 3 and curves["standard warm-up"]["step"] == [0, 2, 3]
    assert warm.config["lr_warmup_steps"] == 2 and warm.losses[0] == pytest.approx(records["standard"].losses[0])
    assert warm.losses[1] != pytest.approx(records["standard"].losses[1], abs=1e-6)  # a smaller first step

    again = QualityDriver(suite, out, root / "checkpoint", data, info, log=lambda _: None)
    assert again.train(suite.runs[0]) is None  # resumed: recorded already
    report = render(out, root / "report").read_text()
    assert "## Final table" in report and "closed-form" in report
    assert re.search(r"\|\s+revffn\s+\|\s+revffn\s+\|\s+ok\s+\|", report)
    assert (root / "report" / "curves.png").stat().st_size > 0
