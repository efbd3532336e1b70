"""Bad input, tried as a new user would: each case ends in one clear message and a non-zero exit, never a
traceback, and `run` refuses before any worker starts. Cases run in-process through `main()`; a few run as
subprocesses to prove the real exit code and stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import revbench.orchestrator.runner as runner
from revbench.cli import main
from revbench.records import SCHEMA

ROOT = Path(__file__).resolve().parent.parent
TINY = "model: {preset: tiny-qwen2-moe, layers: 1}\nworkload: {batch: 1, seq: 32}\ndevice: cpu\nsteps: 1\n"

# name -> suite file body; each is run as `revbench run FILE` and must be refused naming the field.
SUITES: dict[str, tuple[str, str]] = {
    "empty": ("", "is empty"),
    "a-list": ("- standard\n- lora\n", "must hold a mapping"),
    "bad-yaml": ("name: [unclosed\n", "not valid YAML"),
    "name-parent": ("name: ../escape\n", "name: must be a plain name"),
    "name-absolute": ("name: /tmp/elsewhere\n", "name: must be a plain name"),
    "name-nested": ("name: a/b\n", "name: must be a plain name"),
    "name-dots": ("name: '..'\n", "name: must be a plain name"),
    "name-hidden": ("name: .hidden\n", "name: must be a plain name"),
    "name-space": ("name: 'my suite'\n", "name: must be a plain name"),
    "layers-negative": ("model: {layers: -1}\n", "model.layers: must be >= 1, got -1"),
    "layers-zero": ("model: {layers: 0}\n", "model.layers: must be >= 1"),
    "layers-string": ("model: {layers: two}\n", "model.layers: expected an integer"),
    "experts-zero": ("model: {experts: 0}\n", "model.experts: must be >= 1"),
    "top-k-zero": ("model: {top_k: 0}\n", "model.top_k: must be >= 1"),
    "top-k-over": ("model: {top_k: 16}\n", "model.top_k: top-k 16 is more than the 8 experts"),
    "experts-under-top-k": ("model: {experts: 2, top_k: 4}\n", "model.top_k: top-k 4 is more than the 2"),
    "experts-under-preset-top-k": ("model: {experts: 1}\n", "model.experts: top-k 2 is more than the 1"),
    "hidden-not-divisible": ("model: {hidden: 130}\n", "model.hidden: hidden size 130 is not divisible"),
    "heads-3": ("model: {config: {num_attention_heads: 3}}\n", "model.config.num_attention_heads"),
    "kv-heads-3": ("model: {config: {num_key_value_heads: 3}}\n", "model.config.num_key_value_heads"),
    "config-unknown": ("model: {config: {num_expert: 4}}\n", "did you mean num_experts"),
    "config-vocab-zero": ("model: {config: {vocab_size: 0}}\n", "vocab_size"),
    "vocab-too-small-for-text": ("model: {config: {vocab_size: 100}}\n", "needs a vocabulary of at least 256"),
    "preset-unknown": ("model: {preset: gpt5}\n", "unknown model preset 'gpt5'"),
    "dtype-unknown": ("model: {dtype: fp8}\n", "unknown dtype 'fp8'"),
    "model-path-missing": ("model: {path: /nonexistent/checkpoint}\n", "model.path: checkpoint directory"),
    "model-not-mapping": ("model: 5\n", "model: expected a mapping"),
    "batch-zero": ("workload: {batch: 0}\n", "batch must be >= 1"),
    "seq-one": ("workload: {seq: 1}\n", "seq >= 2"),
    "data-unknown": ("workload: {data: images}\n", "unknown data kind 'images'"),
    "text-path-missing": ("workload: {text_path: /nonexistent/text.txt}\n", "workload.text_path: text file"),
    "heldout-over-one": ("workload: {heldout_fraction: 1.5}\n", "heldout_fraction must be in [0, 1)"),
    "lr-negative": ("optimizer: {lr: -0.001}\n", "optimizer.lr: must be a finite number > 0, got -0.001"),
    "lr-zero": ("optimizer: {lr: 0}\n", "optimizer.lr: must be a finite number > 0"),
    "lr-string": ("optimizer: {lr: fast}\n", "optimizer.lr: expected a number"),
    "weight-decay-negative": ("optimizer: {weight_decay: -1}\n", "optimizer.weight_decay"),
    "eps-zero": ("optimizer: {eps: 0}\n", "optimizer.eps"),
    "beta-over-one": ("optimizer: {betas: [1.5, 0.9]}\n", "optimizer.betas[0]: must be in [0, 1)"),
    "betas-one-value": ("optimizer: {betas: [0.9]}\n", "optimizer.betas: expected a list of 2 values"),
    "methods-empty": ("methods: []\n", "methods: must list at least one method"),
    "method-unknown": ("methods: [adam]\n", "unknown method 'adam'"),
    "method-twice": ("methods: [standard, standard]\n", "lists a method twice"),
    "options-unknown-method": ("options: {adam: {}}\n", "options.adam: names no method or technique"),
    "option-unknown": ("methods: [lora]\noptions: {lora: {rnak: 8}}\n", "options.lora.rnak: unknown option"),
    "steps-zero": ("steps: 0\n", "steps: must be >= 1"),
    "warmup-zero": ("warmup: 0\n", "warmup: must be >= 1"),
    "repeats-zero": ("repeats: 0\n", "repeats: must be >= 1"),
    "gpus-zero": ("gpus: 0\n", "gpus: must be >= 1"),
    "gpus-two-on-cpu": ("gpus: 2\n", "gpus: asks for 2 GPUs"),
    "timeout-negative": ("timeout_s: -5\n", "timeout_s: must be positive"),
    "device-unknown": ("device: tpu\n", "device: expected auto, cpu, cuda or cuda:N"),
    "budget-words": ("memory_budget: lots\n", "memory_budget: cannot read 'lots' as a size"),
    "budget-zero": ("memory_budget: 0\n", "memory_budget: a size must be at least 1 byte"),
    "budget-negative": ("memory_budget: -5MiB\n", "memory_budget: cannot read '-5MiB'"),
    "budget-unit": ("memory_budget: 80XB\n", "memory_budget: cannot read '80XB' as a size"),
    "sweep-bad-point": ("sweeps: [{model.layers: [1, 0]}]\n", "model.layers: must be >= 1"),
    "sweep-unknown-key": ("sweeps: [{model.depth: [1]}]\n", "sweeps[0].model.depth: unknown field"),
    "sweep-no-values": ("sweeps: [{workload.seq: []}]\n", "must list at least one value"),
    "sweep-name": ("sweeps: [{name: [a, b]}]\n", "name cannot be swept"),
    "search-not-int": ("search: [{key: workload.data}]\n", "is not an integer field"),
    "search-start-over-max": ("search: [{key: workload.batch, start: 8, max: 4}]\n", "start <= max"),
    "search-resolution": ("search: [{key: workload.batch, resolution: 0}]\n", "resolution: must be >= 1"),
    "unknown-field": ("stepz: 3\n", "stepz: unknown field"),
    "seed-string": ("seed: x\n", "seed: expected an integer"),
    "own-driver": ("driver: quality\n", "has its own driver"),
}

RAW = ("empty", "a-list", "bad-yaml")  # written as they are; the others are merged into the tiny suite


def merged(body: str) -> dict:
    """The tiny suite with the fields of `body` laid over it (mappings merged one level deep)."""
    data = {"name": "s", **yaml.safe_load(TINY)}
    for key, value in yaml.safe_load(body).items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) and isinstance(value, dict) else value
    return data


# `revbench run tiny.yaml ARGS...` with a valid suite and a bad flag or override.
RUN_FLAGS: dict[str, tuple[list[str], str]] = {
    "set-no-equals": (["--set", "model.layers"], "--set takes key=value"),
    "set-no-key": (["--set", "=3"], "--set takes key=value"),
    "set-layers-zero": (["--set", "model.layers=0"], "model.layers: must be >= 1"),
    "set-layers-negative": (["--set", "model.layers=-2"], "model.layers: must be >= 1"),
    "set-heads-3": (["--set", "model.config.num_attention_heads=3"], "model.config.num_attention_heads"),
    "set-top-k": (["--set", "model.top_k=99"], "model.top_k: top-k 99"),
    "set-experts-zero": (["--set", "model.experts=0"], "model.experts: must be >= 1"),
    "set-unknown": (["--set", "nope.field=1"], "nope: unknown field"),
    "set-bad-yaml": (["--set", "workload.batch=[1"], "is not valid YAML"),
    "set-lr-negative": (["--set", "optimizer.lr=-1"], "optimizer.lr: must be a finite number > 0"),
    "set-name-escape": (["--set", "name=../x"], "name: must be a plain name"),
    "set-budget-unit": (["--set", "memory_budget=80XB"], "cannot read '80XB' as a size"),
    "set-text-path": (["--set", "workload.text_path=/nope.txt"], "workload.text_path"),
    "set-model-path": (["--set", "model.path=/nope"], "model.path: checkpoint directory '/nope' does not exist"),
    "set-sub-field-of-int": (["--set", "steps.x=1"], "steps has no sub-fields"),
    "methods-unknown": (["--methods", "adam"], "unknown method 'adam'"),
    "methods-empty": (["--methods", ","], "expected a comma-separated list"),
    "retry-unknown": (["--retry", "failed"], "--retry: unknown status 'failed'"),
    "device-unknown": (["--device", "tpu"], "device: expected auto, cpu, cuda or cuda:N"),
    "flag-unknown": (["--fast"], "unrecognized arguments: --fast"),
}


def record(**changes: object) -> dict:
    """A record as the orchestrator writes it (one line of results.jsonl), with `changes` applied."""
    data = {"run_id": "standard-000000000000-r0", "suite": "t", "method": "standard", "status": "ok",
            "config": {"model": {"preset": "tiny-qwen2-moe", "layers": 1, "hidden": 128, "experts": 8, "top_k": 2,
                                 "dtype": "float32"},
                       "workload": {"batch": 1, "seq": 32, "data": "text"}, "device": "cpu", "steps": 1,
                       "warmup": 1, "repeat": 0, "gpus": 1, "memory_budget_bytes": None},
            "env": {"torch": "x"}, "error": None, "losses": [5.0], "metrics": {"tokens_per_s": 10.0},
            "method_stats": {}, "started": None, "finished": None, "duration_s": 1.0, "schema": SCHEMA}
    data.update(changes)
    return data


def without(key: str) -> dict:
    data = record()
    del data[key]
    return data


# results.jsonl contents none of whose lines is a readable record.
RECORDS: dict[str, tuple[str, str]] = {
    "empty-file": ("", "holds no run records"),
    "not-an-object": ("[1, 2, 3]\n", "a JSON list, not an object"),
    "a-number": ("42\n", "a JSON int, not an object"),
    "a-string": ('"ok"\n', "a JSON str, not an object"),
    "null": ("null\n", "a JSON NoneType, not an object"),
    "torn-line": (json.dumps(record())[:80] + "\n", "not JSON"),
    "not-json": ("this is not json\n", "not JSON"),
    "missing-config": (json.dumps(without("config")) + "\n", "no config"),
    "missing-run-id": (json.dumps(without("run_id")) + "\n", "no run_id"),
    "extra-key": (json.dumps(record(flavour="mint")) + "\n", "unknown field flavour"),
    "other-schema": (json.dumps(record(schema="revbench.run/0")) + "\n", "schema 'revbench.run/0'"),
    "no-schema": (json.dumps(without("schema")) + "\n", "schema None"),
    "unknown-status": (json.dumps(record(status="great")) + "\n", "unknown status 'great'"),
    "config-a-list": (json.dumps(record(config=[1])) + "\n", "config is a list"),
    "config-without-model": (json.dumps(record(config={"device": "cpu", "workload": {}})) + "\n", "config.model"),
    "losses-strings": (json.dumps(record(losses=["a"])) + "\n", "losses holds a value"),
    "metrics-a-list": (json.dumps(record(metrics=[])) + "\n", "metrics is a list"),
    "binary": ("\x00\x01\x02\n", "not JSON"),
}

CHECK_FLAGS: dict[str, tuple[list[str], str]] = {
    "tolerance-no-equals": (["--tolerance", "tokens_per_s"], "write [method:]metric=percent"),
    "tolerance-unknown-metric": (["--tolerance", "speed=5"], "no metric 'speed'"),
    "tolerance-not-number": (["--tolerance", "tokens_per_s=abc"], "is not a percentage"),
    "tolerance-negative": (["--tolerance", "tokens_per_s=-1"], "cannot be negative"),
    "tolerance-unknown-method": (["--tolerance", "adam:tokens_per_s=5"], "no method 'adam'"),
}

ESTIMATE: dict[str, tuple[list[str], str]] = {
    "layers-zero": (["--model", "tiny-qwen2-moe", "--layers", "0"], "--layers: must be >= 1, got 0"),
    "layers-negative": (["--model", "tiny-qwen2-moe", "--layers", "-2"], "--layers: must be >= 1, got -2"),
    "layers-word": (["--model", "tiny-qwen2-moe", "--layers", "two"], "expected an integer >= 1, got 'two'"),
    "batch-zero": (["--model", "tiny-qwen2-moe", "--batch", "0"], "--batch: must be >= 1"),
    "seq-one": (["--model", "tiny-qwen2-moe", "--seq", "1"], "--seq: must be >= 2"),
    "budget-unit": (["--model", "tiny-qwen2-moe", "--budget", "80XB"], "cannot read '80XB' as a size"),
    "budget-zero": (["--model", "tiny-qwen2-moe", "--budget", "0"], "a size must be at least 1 byte"),
    "budget-negative": (["--model", "tiny-qwen2-moe", "--budget=-1GiB"], "cannot read '-1GiB'"),
    "fit-without-budget": (["--model", "tiny-qwen2-moe", "--fit"], "--fit needs --budget"),
    "fit-axis": (["--model", "tiny-qwen2-moe", "--fit", "width", "--budget", "1GiB"], "invalid choice: 'width'"),
    "model-unknown": (["--model", "gpt5"], "unknown model preset 'gpt5'"),
    "model-missing": ([], "the following arguments are required: --model"),
    "method-unknown": (["--model", "tiny-qwen2-moe", "--method", "adam"], "unknown method 'adam'"),
    "dtype-unknown": (["--model", "tiny-qwen2-moe", "--dtype", "fp8"], "unknown dtype 'fp8'"),
    "device-unknown": (["--model", "tiny-qwen2-moe", "--device", "tpu"], "invalid choice: 'tpu'"),
    "option-untaken": (["--model", "tiny-qwen2-moe", "--method", "standard", "--option", "checkpoint_every=2"],
                       "--option checkpoint_every: none of the methods takes it (their options: tile_tokens)"),
    "option-no-value": (["--model", "tiny-qwen2-moe", "--option", "checkpoint_every"], "expected KEY=VALUE"),
    "option-with-gpus": (["--model", "tiny-qwen2-moe", "--gpus", "2", "--option", "checkpoint_every=2"],
                         "--option applies to the one-GPU estimate"),
}

QUALITY: dict[str, tuple[str | None, list[str], str]] = {
    "missing-file": ("/nonexistent/quality.yaml", [], "does not exist"),
    "set-steps-zero": (None, ["--set", "steps=0"], "steps: must be >= 1"),
    "set-unknown": (None, ["--set", "flavour=mint"], "flavour: unknown field"),
    "set-no-runs": (None, ["--set", "runs=[]"], "runs: must list at least one run"),
    "set-no-equals": (None, ["--set", "steps"], "--set takes key=value"),
    "set-unknown-method": (None, ["--set", "runs=[{label: a, method: adam}]"], "unknown method 'adam'"),
    "set-negative-lr": (None, ["--set", "runs=[{label: a, method: standard, lr: -1}]"], "lr: must be positive"),
    "set-synthetic": (None, ["--set", "workload.data=synthetic"], "it must be 'text'"),
}

OTHER: dict[str, tuple[list[str], str]] = {
    "unknown-command": (["train"], "invalid choice: 'train'"),
    "bench-unknown": (["bench", "speed"], "invalid choice: 'speed'"),
    "bench-nothing": (["bench"], "the following arguments are required: BENCHMARK"),
    "report-nothing": (["report"], "give a results directory (DIR), or --paper-scale"),
    "check-no-reference": (["check", "results"], "the following arguments are required: --against"),
    "run-suite-missing": (["run", "/nonexistent/suite.yaml"], "suite file '/nonexistent/suite.yaml' does not exist"),
    "run-suite-unknown": (["run", "nosuchsuite"], "unknown suite 'nosuchsuite'"),
    "report-missing-dir": (["report", "/nonexistent/results"], "no results file at"),
}


@pytest.fixture(autouse=True)
def no_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every refusal here comes before a worker: starting one fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a worker was started for a bad input")

    monkeypatch.setattr(runner, "execute", refuse)


def refused(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str], code: int = 2) -> None:
    assert main(argv) == code, f"exit code of {argv}"
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    message = captured.err.strip()
    assert expected in message, f"{expected!r} not in {message!r}"
    assert any(line.startswith("revbench") for line in message.splitlines()), message


def tiny_suite(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(f"name: tiny\n{TINY}")
    return path


@pytest.mark.parametrize("name", SUITES)
def test_run_refuses_a_bad_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    body, expected = SUITES[name]
    path = tmp_path / "suite.yaml"
    path.write_text(body if name in RAW else yaml.safe_dump(merged(body)))
    refused(["run", str(path), "--out", str(tmp_path / "out")], expected, capsys)
    assert not (tmp_path / "out" / "results.jsonl").exists()


@pytest.mark.parametrize("name", RUN_FLAGS)
def test_run_refuses_a_bad_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    flags, expected = RUN_FLAGS[name]
    refused(["run", str(tiny_suite(tmp_path)), "--out", str(tmp_path / "out"), *flags], expected, capsys)


@pytest.mark.parametrize("argv", [["run", "{suite}", "--out"], ["run", "{suite}", "--report-dir"],
                                  ["quality", "--out"], ["quality", "--report-dir"], ["report", "{tmp}", "--out"]])
def test_an_output_directory_that_is_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       argv: list[str]) -> None:
    (tmp_path / "taken").write_text("x")
    argv = [a.format(suite=tiny_suite(tmp_path), tmp=tmp_path) for a in argv]
    refused([*argv, str(tmp_path / "taken")], f"argument {argv[-1]}: '{tmp_path / 'taken'}' is a file", capsys)


def test_run_refuses_a_checkpoint_without_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ckpt").mkdir()
    path = tmp_path / "suite.yaml"
    path.write_text(f"name: t\nmodel: {{path: {tmp_path / 'ckpt'}}}\ndevice: cpu\n")
    refused(["run", str(path)], "has no config.json", capsys)


def test_run_refuses_a_text_too_short_for_seq(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "short.txt").write_text("abc")
    refused(["run", str(tiny_suite(tmp_path)), "--set", f"workload.text_path={tmp_path / 'short.txt'}"],
            "fewer than workload.seq=32", capsys)


@pytest.mark.parametrize("name", RECORDS)
@pytest.mark.parametrize("command", ["check", "report", "run"])
def test_unreadable_records_are_skipped_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       name: str, command: str) -> None:
    content, why = RECORDS[name]
    results = tmp_path / "results"
    results.mkdir()
    (results / "results.jsonl").write_bytes(content.encode())
    if command == "run":  # a resumed sweep reads the file, warns, and goes on to plan its runs
        suite = tiny_suite(tmp_path)
        refused(["run", str(suite), "--out", str(results), "--set", "steps=0"], "steps: must be >= 1", capsys)
        return
    argv = (["check", str(results), "--against", str(results)] if command == "check"
            else ["report", str(results), "--out", str(tmp_path / "report")])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "holds no run records" in err
    if content:
        assert "results.jsonl:1: skipped" in err and why in err, err


def test_a_bad_line_among_good_ones_is_skipped_and_the_rest_is_read(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    results.mkdir()
    lines = [json.dumps(record()), "[1]", json.dumps(without("config")), json.dumps(record(extra=1)), "{torn"]
    (results / "results.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["check", str(results), "--against", str(results), "--json"]) == 0
    captured = capsys.readouterr()
    verdict = json.loads(captured.out)
    assert verdict["passed"] and verdict["compared"] == 1
    for number, why in ((2, "not an object"), (3, "no config"), (4, "unknown field extra"), (5, "not JSON")):
        assert f"results.jsonl:{number}: skipped" in captured.err and why in captured.err


@pytest.mark.parametrize("name", CHECK_FLAGS)
def test_check_refuses_a_bad_tolerance(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "results.jsonl").write_text(json.dumps(record()) + "\n")
    flags, expected = CHECK_FLAGS[name]
    refused(["check", str(results), "--against", str(results), *flags], expected, capsys)


def test_check_exit_codes_are_distinct(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    for directory, data in ((cpu, record()), (gpu, record(config={**record()["config"], "device": "cuda"}))):
        directory.mkdir()
        (directory / "results.jsonl").write_text(json.dumps(data) + "\n")
    refused(["check", str(cpu), "--against", str(gpu)], "refusing to compare", capsys, code=3)
    refused(["check", str(cpu), "--against", str(tmp_path / "none")], "no results file", capsys, code=2)


@pytest.mark.parametrize("name", ESTIMATE)
def test_estimate_refuses_bad_arguments(capsys: pytest.CaptureFixture[str], name: str) -> None:
    flags, expected = ESTIMATE[name]
    refused(["estimate", *flags], expected, capsys)


@pytest.mark.parametrize("name", QUALITY)
def test_quality_refuses_a_bad_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    suite, flags, expected = QUALITY[name]
    refused(["quality", *([suite] if suite else []), *flags, "--out", str(tmp_path / "q")], expected, capsys)


def test_quality_refuses_an_empty_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "q.yaml").write_text("")
    refused(["quality", str(tmp_path / "q.yaml")], "is empty", capsys)


@pytest.mark.parametrize("name", OTHER)
def test_other_bad_commands(capsys: pytest.CaptureFixture[str], name: str) -> None:
    argv, expected = OTHER[name]
    refused(argv, expected, capsys)


@pytest.mark.parametrize(("argv", "expected"), [
    (["run", "{suite}", "--set", "model.layers=-1"], "model.layers: must be >= 1"),
    (["estimate", "--model", "tiny-qwen2-moe", "--budget", "80XB"], "cannot read '80XB' as a size"),
    (["check", "{tmp}/none", "--against", "{tmp}/none"], "no results file"),
])
def test_the_real_process_exits_2_with_one_line(tmp_path: Path, argv: list[str], expected: str) -> None:
    suite = tiny_suite(tmp_path)
    argv = [a.format(suite=suite, tmp=tmp_path) for a in argv]
    done = subprocess.run([sys.executable, "-m", "revbench", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and expected in done.stderr and "Traceback" not in done.stderr, done.stderr
