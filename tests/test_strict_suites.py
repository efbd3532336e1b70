"""Strict suite files (issue 37): a key given twice, one composition listed twice, a number that is not finite or
out of range, a device torch reads but revbench does not mean: each refused with one line naming it, exit 2, no
traceback, before any worker starts; the same rules for `--set` and for `revbench quality`; and a build whose
metadata raises no deprecation warning."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from test_bad_inputs import ROOT, TINY, merged, tiny_suite

from revbench.cli import main
from revbench.orchestrator import strict_yaml
from revbench.orchestrator.suite import load_suite

# name -> (the lines of a suite file: after the tiny suite's where a key is given twice, else laid over its fields;
# the refusal it must give)
SUITE_FILES: dict[str, tuple[str, str]] = {
    "key-twice": ("warmup: 2\nwarmup: 5\n", "duplicate key 'warmup' (first at line 6) at line 7"),
    "tiny-key-again": ("steps: 2\n", "duplicate key 'steps' (first at line 5) at line 6"),
    "nested-key-twice": ("optimizer:\n  lr: 0.001\n  lr: 0.1\n", "duplicate key 'lr' (first at line 7) at line 8"),
    "flow-key-twice": ("options: {lora: {rank: 8, rank: 16}}\n", "duplicate key 'rank'"),
    "name-twice": ("name: other\n", "duplicate key 'name' (first at line 1)"),
    "preset-and-composition": ("methods: [standard, store+adamw+full]\n",
                               "methods[1]: 'store+adamw+full' is 'standard' again: both compose store+adamw+full"),
    "two-presets-alike": ("methods: [checkpointing, checkpoint+adamw+full]\n", "'checkpointing' again"),
    "alike-by-override": ("methods: [standard, checkpointing]\nactivations: checkpoint\n",
                          "both compose checkpoint+adamw+full under the suite's axis overrides"),
    "timeout-nan": ("timeout_s: .nan\n", "timeout_s: expected a finite number, got nan"),
    "timeout-inf": ("timeout_s: .inf\n", "timeout_s: expected a finite number, got inf"),
    "timeout-nan-string": ("timeout_s: 'NaN'\n", "timeout_s: expected a finite number, got nan"),
    "timeout-huge": ("timeout_s: 1e400\n", "timeout_s: expected a finite number, got inf"),
    "lr-nan": ("optimizer: {lr: .nan}\n", "optimizer.lr: expected a finite number, got nan"),
    "lr-minus-inf": ("optimizer: {lr: -.inf}\n", "optimizer.lr: expected a finite number, got -inf"),
    "heldout-nan": ("workload: {batch: 1, seq: 32, heldout_fraction: .nan}\n",
                    "workload.heldout_fraction: expected a finite number, got nan"),
    "beta-inf": ("optimizer: {betas: [.inf, 0.9]}\n", "optimizer.betas[0]: expected a finite number, got inf"),
    "cpu-index": ("device: 'cpu:0'\n", "device: expected auto, cpu, cuda or cuda:N, got 'cpu:0' (the CPU has no"),
    "cuda-negative": ("device: 'cuda:-1'\n", "device: expected auto, cpu, cuda or cuda:N, got 'cuda:-1'"),
    "device-space": ("device: ' cpu'\n", "got ' cpu'"),
    "device-upper": ("device: CPU\n", "got 'CPU'"),
    "lora-alpha-nan": ("methods: [lora]\noptions: {lora: {alpha: .nan}}\n",
                       "option alpha must be a finite number > 0, not nan"),
    "lora-rank-fraction": ("methods: [lora]\noptions: {lora: {rank: 2.5}}\n",
                           "option rank must be a whole number of adapter dimensions >= 1, not 2.5"),
    "chunk-tokens-inf": ("methods: [store+adamw+chunked]\noptions: {chunked: {chunk_tokens: .inf}}\n",
                         "option chunk_tokens must be a whole number of tokens >= 1, not inf"),
    "seed-negative": ("seed: -1\n", "seed: must be in [0, 4294967295], got -1"),
    "seed-huge": ("seed: 18446744073709551616\n", "seed: must be in [0, 4294967295]"),
    "workload-seed-negative": ("workload: {batch: 1, seq: 32, seed: -5}\n",
                               "workload.seed: must be in [0, 4294967295]"),
}


KEYS_TWICE = ("key-twice", "tiny-key-again", "nested-key-twice", "flow-key-twice", "name-twice")


def suite_file(tmp_path: Path, lines: str, raw: bool = True) -> Path:
    """The tiny suite (line 1 its name, lines 2-5 its fields) followed by `lines`, or (`raw` False) with the fields
    of `lines` laid over it."""
    path = tmp_path / "suite.yaml"
    path.write_text(f"name: s\n{TINY}{lines}" if raw else yaml.safe_dump(merged(lines)))
    return path


def refuses(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 2, no traceback, and one line on stderr that says `expected`."""
    assert main(argv) == 2, f"exit code of {argv}"
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("revbench ") and expected in lines[0], lines


@pytest.mark.parametrize("name", SUITE_FILES)
def test_a_strict_rule_refuses_the_suite_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    lines, expected = SUITE_FILES[name]
    path = suite_file(tmp_path, lines, raw=name in KEYS_TWICE)
    refuses(["run", str(path), "--out", str(tmp_path / "out")], expected, capsys)
    assert not (tmp_path / "out").exists()


# `revbench run tiny.yaml --set ...`: the same rules for the command line's values.
SETS: dict[str, tuple[list[str], str]] = {
    "set-twice": (["--set", "steps=1", "--set", "steps=2"], "steps: --set gives it 2 times (1 and 2); give it once"),
    "set-flow-key-twice": (["--set", "optimizer={lr: 0.1, lr: 0.2}"], "duplicate key 'lr'"),
    "set-nan": (["--set", "timeout_s=.nan"], "timeout_s: expected a finite number, got nan"),
    "set-inf-lr": (["--set", "optimizer.lr=.inf"], "optimizer.lr: expected a finite number, got inf"),
    "set-cpu-index": (["--set", "device=cpu:0"], "got 'cpu:0' (the CPU has no index: cpu)"),
    "set-device-flag": (["--device", "cpu:1"], "got 'cpu:1'"),
    "set-seed": (["--set", "seed=-3"], "seed: must be in [0, 4294967295], got -3"),
    "set-alike": (["--set", "methods=[lora, store+lora+full]"], "'store+lora+full' is 'lora' again"),
    "methods-flag-alike": (["--methods", "zero3,store+zero3+full"], "'store+zero3+full' is 'zero3' again"),
}


@pytest.mark.parametrize("name", SETS)
def test_a_strict_rule_refuses_the_set_value(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    flags, expected = SETS[name]
    refuses(["run", str(tiny_suite(tmp_path)), "--out", str(tmp_path / "out"), *flags], expected, capsys)


QUALITY_FILE = "runs: [{label: a, method: standard}]\nworkload: {data: text}\n"
# `revbench quality`: a file (the lines after a one-run suite), or the shipped suite with --set.
QUALITY: dict[str, tuple[str | None, list[str], str]] = {
    "name-escape": ("name: ../elsewhere\n", [], "name: must be a plain name"),
    "name-nested": ("name: a/b\n", [], "name: must be a plain name"),
    "key-twice": ("steps: 4\nsteps: 8\n", [], "duplicate key 'steps' (first at line 3) at line 4"),
    "set-name-escape": (None, ["--set", "name=../../x"], "name: must be a plain name"),
    "set-twice": (None, ["--set", "steps=1", "--set", "steps=3"], "steps: --set gives it 2 times"),
    "set-lr-nan": (None, ["--set", "runs=[{label: a, method: standard, lr: .nan}]"],
                   "runs[0].lr: expected a finite number, got nan"),
    "set-optimizer-lr-negative": (None, ["--set", "optimizer.lr=-1"], "optimizer.lr: must be a finite number > 0"),
    "set-cpu-index": (None, ["--set", "device=cpu:0"], "device: expected auto, cpu, cuda or cuda:N, got 'cpu:0'"),
    "set-seed": (None, ["--set", "upcycle.seed=-1"], "upcycle.seed: must be in [0, 4294967295]"),
}


@pytest.mark.parametrize("name", QUALITY)
def test_a_strict_rule_refuses_the_quality_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 name: str) -> None:
    lines, flags, expected = QUALITY[name]
    suite = []
    if lines is not None:
        (tmp_path / "q.yaml").write_text(f"{QUALITY_FILE}{lines}")
        suite = [str(tmp_path / "q.yaml")]
    refuses(["quality", *suite, *flags, "--out", str(tmp_path / "q")], expected, capsys)


def test_what_strictness_still_reads(tmp_path: Path) -> None:
    """A merge's keys overridden by the mapping's own, an alias, methods that differ, cuda:N and a 1e-3 learning
    rate (YAML 1.1 reads it as a string) all load."""
    text = ("base: &base {lr: 0.001, weight_decay: 0.1}\n"
            "optimizer:\n  <<: *base\n  lr: 1e-3\n")
    assert strict_yaml.load(text)["optimizer"] == {"lr": "1e-3", "weight_decay": 0.1}
    path = suite_file(tmp_path, "methods: [standard, lora, checkpoint+adamw+full]\noptimizer: {lr: 1e-3}\n",
                      raw=False)
    suite = load_suite(str(path))
    assert suite.methods == ["standard", "lora", "checkpoint+adamw+full"] and suite.optimizer.lr == 0.001
    with pytest.raises(yaml.YAMLError, match="duplicate key 'a'"):
        strict_yaml.load("a: 1\nb: {c: 2}\na: 3\n")


def test_the_real_process_refuses_a_key_given_twice_in_one_line(tmp_path: Path) -> None:
    path = suite_file(tmp_path, "warmup: 2\nwarmup: 5\n")
    done = subprocess.run([sys.executable, "-m", "revbench", "run", str(path), "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"revbench run: error: suite file {str(path)!r} is not valid YAML: duplicate key 'warmup' (first at line 6) "
        "at line 7, column 1"]


def test_the_build_metadata_raises_no_warning() -> None:
    """`project.license` is an SPDX expression (PEP 639): setuptools' deprecated license table would stop building
    after 2027-02-18. The metadata is built with every warning an error, in a scratch folder."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license = "Apache-2.0"' in pyproject
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name in ("pyproject.toml", "README.md"):
            (folder / name).write_text((ROOT / name).read_text())
        (folder / "revbench").symlink_to(ROOT / "revbench")
        (folder / "meta").mkdir()
        done = subprocess.run(
            [sys.executable, "-W", "error", "-c", "import sys; from setuptools import build_meta; "
             "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))", str(folder / "meta")],
            cwd=folder, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        metadata = next((folder / "meta").glob("*.dist-info")) / "METADATA"
        assert "License-Expression: Apache-2.0" in metadata.read_text()
