"""The quality suite's driver: upcycle once, then fine-tune each run and evaluate held-out loss between steps.

Evaluation happens between optimizer steps, never inside one, under `torch.no_grad()` in eval mode on fixed
held-out batches; it draws no random numbers, so the training trajectory is the same with or without it.
Step times exclude evaluation. Each finished run appends one record to `<out>/results.jsonl`; a run whose
id already has an `ok` record there is skipped, so a killed suite resumes.
"""

from __future__ import annotations

import gc
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from revbench.env import environment_stamp
from revbench.methods import create_method
from revbench.models import ModelSpec, load_pretrained, parameter_count
from revbench.pretrained import (
    TokenizedStream,
    UpcycleSpec,
    keep_layers,
    load_dense,
    load_tokenizer,
    locate_gguf,
    tokenize_file,
    upcycle,
)
from revbench.pretrained.store import checkpoint_path, is_built, provenance, save_upcycled
from revbench.quality.heldout import heldout_loss, perplexity
from revbench.quality.suite import QualityRun, QualitySuite
from revbench.records import RunRecord, append_record, read_records, run_id
from revbench.spec import TrainSpec

Log = Callable[[str], None]


@dataclass
class QualityData:
    train: TokenizedStream
    heldout: list[torch.Tensor]  # the fixed evaluation batches
    tokens: int  # tokens in the whole text


def prepare_data(suite: QualitySuite, gguf: Path) -> QualityData:
    tokens = tokenize_file(load_tokenizer(gguf), suite.workload.text_path)
    heldout = TokenizedStream(suite.workload, tokens, split="heldout").spread(suite.eval_batches)
    return QualityData(TokenizedStream(suite.workload, tokens, split="train"), heldout, len(tokens))


class QualityDriver:
    """Runs a quality suite against one upcycled checkpoint and one tokenised text (see `run_quality`)."""

    def __init__(self, suite: QualitySuite, out_dir: str | Path, checkpoint: Path, data: QualityData,
                 provenance: dict[str, Any], log: Log = print) -> None:
        self.suite = suite
        self.out_dir = Path(out_dir)
        self.checkpoint = checkpoint
        self.data = data
        self.provenance = provenance  # where the weights come from (see revbench.pretrained.store)
        self.source = provenance["source"]
        self.log = log
        self.env = environment_stamp()
        results = self.out_dir / "results.jsonl"
        self.done = {r.run_id for r in read_records(results) if r.status == "ok"} if results.is_file() else set()

    # -- configs and records ---------------------------------------------------------------------------
    def base_config(self) -> dict[str, Any]:
        s = self.suite
        return {"source": self.source, "upcycle": s.upcycle.to_dict(), "workload": s.workload.to_dict(),
                "tokenizer": f"SmolLM2 BPE from {self.source}", "eval_batches": s.eval_batches,
                "seed": s.seed, "device": s.device}

    def run_config(self, run: QualityRun) -> dict[str, Any]:
        spec = self.train_spec(run)
        config = {**self.base_config(), **spec.to_dict(), "label": run.label, "steps": self.suite.steps_of(run),
                  "eval_steps": self.suite.eval_steps(run)}
        if run.lr_warmup_steps is not None:  # only when set, so the records of earlier runs keep their ids
            config["lr_warmup_steps"] = run.lr_warmup_steps
        return config

    def train_spec(self, run: QualityRun) -> TrainSpec:
        s = self.suite
        model = ModelSpec(path=str(self.checkpoint), dtype="float32")
        return TrainSpec(model=model, workload=s.workload, optimizer=s.optimizer_for(run), seed=s.seed,
                         device=s.device, options=dict(run.options))

    def identity(self, method: str, config: dict[str, Any]) -> str:
        # The checkpoint path is derived from what is already in the config; where it lives is not identity.
        identity = {**config, "model": {**config.get("model", {}), "path": None}}
        workload = config.get("workload", {})
        if workload.get("tokenizer", "") is None:  # the field came later: records from before it keep their ids
            identity["workload"] = {k: v for k, v in workload.items() if k != "tokenizer"}
        return run_id(self.suite.name, method, identity, 0)

    def record(self, method: str, config: dict[str, Any], started: float, **fields: Any) -> RunRecord:
        record = RunRecord(run_id=self.identity(method, config), suite=self.suite.name, method=method,
                           config=config, env=self.env, started=_iso(started), finished=_iso(time.time()),
                           duration_s=round(time.time() - started, 3), **fields)
        append_record(self.out_dir, record)
        return record

    def evaluate(self, model: torch.nn.Module) -> float:
        return heldout_loss(model, self.data.heldout)

    # -- the three kinds of run ------------------------------------------------------------------------
    def upcycle(self, load_dense: Callable[[], PreTrainedModel]) -> None:
        """Build the checkpoint if needed, and record the dense and upcycled held-out losses (they must agree:
        identical experts and normalised routing reproduce the dense model)."""
        config = {**self.base_config(), "label": "dense -> upcycled MoE"}
        if is_built(self.checkpoint) and self.identity("upcycle", config) in self.done:
            return
        started = time.time()
        spec: UpcycleSpec = self.suite.upcycle
        self.log(f"loading {self.source} and upcycling it into {spec.family} ({spec.experts} experts, "
                 f"top-{spec.top_k})")
        dense = keep_layers(load_dense(), spec.layers)
        moe = upcycle(dense, spec)
        dense_loss, moe_loss = self.evaluate(dense), self.evaluate(moe)
        self.log(f"held-out loss: dense {dense_loss:.5f}, upcycled {moe_loss:.5f} "
                 f"(difference {moe_loss - dense_loss:+.1e})")
        if not is_built(self.checkpoint):
            save_upcycled(moe, self.checkpoint, self.provenance)
            self.log(f"checkpoint: {self.checkpoint}")
        dense_params, moe_params = parameter_count(dense), parameter_count(moe)
        del dense, moe
        self.record("upcycle", config, started, status="ok", metrics={
            "dense_heldout_loss": dense_loss, "upcycled_heldout_loss": moe_loss,
            "abs_difference": abs(moe_loss - dense_loss), "dense_parameters": dense_params,
            "upcycled_parameters": moe_params})

    def conversion(self, options: dict[str, Any]) -> None:
        """The RevFFN-converted model's held-out loss before any training."""
        from revbench.revffn import convert

        spec = TrainSpec(model=ModelSpec(path=str(self.checkpoint), dtype="float32"), options=dict(options),
                         device=self.suite.device, seed=self.suite.seed)
        config = {**self.base_config(), **spec.to_dict(), "label": _label("convert", options), "steps": 0}
        if self.identity("revffn", config) in self.done:
            return
        started = time.time()
        torch.manual_seed(self.suite.seed)
        model = convert(load_pretrained(self.checkpoint, spec.model, device=self.suite.device), **options)
        loss = self.evaluate(model)
        self.log(f"{config['label']}: held-out loss {loss:.4f} before training")
        self.record("revffn", config, started, status="ok", metrics=_curve([0], [loss]))

    def train(self, run: QualityRun) -> RunRecord | None:
        config = self.run_config(run)
        if self.identity(run.method, config) in self.done:
            self.log(f"{run.label}: recorded already, skipped")
            return None
        started = time.time()
        eval_steps = self.suite.eval_steps(run)
        total = self.suite.steps_of(run)
        losses: list[float] = []
        steps_done, evals, step_seconds, eval_seconds = 0, [], [], 0.0
        method = create_method(run.method, self.train_spec(run))
        status, error, stats = "ok", None, {}
        try:
            method.prepare()
            base_lrs = [group["lr"] for group in method.optimizer.param_groups] if run.lr_warmup_steps else []
            for step in range(total + 1):
                if step in eval_steps:
                    t = time.perf_counter()
                    evals.append(self.evaluate(method.model))
                    eval_seconds += time.perf_counter() - t
                    train = f", last training loss {losses[-1]:.4f}" if losses else " (before training)"
                    self.log(f"{run.label}: step {step}/{total}, held-out loss {evals[-1]:.4f}{train}")
                if step == total:
                    break
                for group, lr in zip(method.optimizer.param_groups if base_lrs else [], base_lrs, strict=True):
                    group["lr"] = lr * run.lr_factor(step)
                method.zero_grad()
                t = time.perf_counter()
                losses.append(float(method.train_step(self.data.train.batch(step))))
                step_seconds.append(time.perf_counter() - t)
                steps_done += 1
                if not math.isfinite(losses[-1]):
                    status, error = "diverged", f"training loss is {losses[-1]} at step {step}"
                    break
            stats = method.stats()
        except Exception as exc:  # recorded, so that the other runs still go ahead
            status, error = "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
            self.log(f"{run.label}: failed: {type(exc).__name__}: {exc}")
        finally:
            method.teardown()
            del method
            gc.collect()
        metrics = {**_curve(eval_steps[: len(evals)], evals), "steps_done": steps_done,
                   "train_step_seconds": step_seconds, "train_seconds": sum(step_seconds),
                   "eval_seconds": eval_seconds,
                   "tokens_trained": steps_done * self.suite.workload.tokens_per_step}
        if run.warmup_steps is not None and run.warmup_steps in eval_steps[: len(evals)]:
            metrics["warmup_heldout_loss"] = evals[eval_steps.index(run.warmup_steps)]
        return self.record(run.method, config, started, status=status, error=error, losses=losses,
                           metrics=metrics, method_stats=stats)


def run_quality(suite: QualitySuite, out_dir: str | Path, log: Log = print) -> QualityDriver:
    """The whole suite: tokenise, upcycle (once; cached by spec), evaluate the conversions, train every run."""
    gguf = locate_gguf(suite.gguf)
    data = prepare_data(suite, gguf)
    log(f"text: {data.tokens:,} SmolLM2 tokens; {len(data.heldout)} held-out batches of "
        f"{suite.workload.batch}x{suite.workload.seq}")
    driver = QualityDriver(suite, out_dir, checkpoint_path(gguf, suite.upcycle), data,
                           provenance(gguf, suite.upcycle), log)
    torch.manual_seed(suite.seed)
    driver.upcycle(lambda: load_dense(gguf))
    for options in suite.conversions:
        driver.conversion(options)
    for run in suite.runs:
        driver.train(run)
    return driver


def _curve(steps: list[int], losses: list[float]) -> dict[str, Any]:
    return {"heldout": {"step": steps, "loss": losses, "perplexity": [perplexity(x) for x in losses]},
            "initial_heldout_loss": losses[0] if losses else None,
            "final_heldout_loss": losses[-1] if losses else None,
            "final_perplexity": perplexity(losses[-1]) if losses else None}


def _label(prefix: str, options: dict[str, Any]) -> str:
    return " ".join([prefix, *(f"{k}={v}" for k, v in sorted(options.items()))]) if options else f"{prefix} (defaults)"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")
