"""The one byte parser and formatter, and a command line that imports nothing heavy to answer --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from revbench.benchmarks.cli import HEAVY, heavy_imports
from revbench.units import format_bytes, parse_bytes, unit_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("text", "expected"), [
    ("64MiB", 64 * 2**20), ("1.5 GiB", 3 * 2**29), ("80GB", 80 * 10**9), ("141gb", 141 * 10**9),
    ("8.5e10", 85_000_000_000), ("1024", 1024), (1000, 1000), ("2 TiB", 2 * 2**40), ("512b", 512),
])
def test_parse_bytes(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["80XB", "lots", "", "-5MiB", "0", 0, "0.5", True, "1e400", "GiB"])
def test_parse_bytes_refuses_with_the_forms_it_takes(text: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_bytes(text)  # type: ignore[arg-type]


def test_format_bytes_picks_the_unit_that_fits() -> None:
    assert format_bytes(512 * 2**10) == "0.50 MiB"
    assert format_bytes(3 * 2**29) == "1.50 GiB"
    assert format_bytes(23_194_888.96 * 2**30) == "22.12 PiB"  # never "23,194,888.96 GiB"
    assert format_bytes(None) == "-" and format_bytes(float("nan")) == "-"
    assert format_bytes(2**30, "MiB", digits=0) == "1,024 MiB"
    assert unit_for([2**20, 5 * 2**40, None]) == "TiB"


@pytest.mark.parametrize("argv", [["--help"], ["env", "--json"], ["run", "--help"], ["check", "--help"],
                                  ["estimate", "--help"], ["bench", "--help"]])
def test_help_and_env_import_nothing_heavy(argv: list[str]) -> None:
    assert heavy_imports(argv) == [], f"revbench {' '.join(argv)} imported one of {HEAVY}"


def test_env_json_without_torch_matches_the_stamp_with_it() -> None:
    light = subprocess.run([sys.executable, "-m", "revbench", "env", "--json"], cwd=ROOT, capture_output=True,
                           text=True, check=True)
    probe = "import torch, json; from revbench.env import environment_stamp; print(json.dumps(environment_stamp()))"
    heavy = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    with_torch = json.loads(heavy.stdout.strip().splitlines()[-1])
    without = json.loads(light.stdout)
    for key in ("torch", "cuda", "gpu", "gpu_count", "transformers", "python"):
        assert without[key] == with_torch[key], key
